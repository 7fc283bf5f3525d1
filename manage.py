#!/usr/bin/env python
"""Django's command-line utility for Payshift."""

import os
import sys
from pathlib import Path

import environ


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")
    # An optional `.env` (./scripts/up writes the demo keys there); the real environment wins over it.
    env_file = Path(os.environ.get("PAYSHIFT_ENV_FILE", Path(__file__).resolve().parent / ".env"))
    if env_file.is_file():
        environ.Env.read_env(env_file)
    from django.core.management import execute_from_command_line

    import payshift.celery  # noqa: F401  (the Celery app commands and the Django Q cluster publish with)

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
