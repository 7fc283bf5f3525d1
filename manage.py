#!/usr/bin/env python
"""Django's command-line utility for Payshift's own project."""

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")
    # A developer's `.env` (or the one ./scripts/up writes in demo mode) for the commands typed here, such as
    # test_webhook in a second terminal. Only this entry point reads it: the settings and the test suite never.
    import environ

    env_file = Path(os.environ.get("PAYSHIFT_ENV_FILE", Path(__file__).resolve().parent / ".env"))
    if env_file.is_file():
        environ.Env.read_env(str(env_file))
    import django

    import payshift.celery  # noqa: F401  (the Celery app commands and the Django Q cluster publish with)

    django.setup()
    from django.core.management import execute_from_command_line

    from payshift.paths import var_dir_prepare

    var_dir_prepare()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
