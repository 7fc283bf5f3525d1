#!/usr/bin/env python
"""Django's command-line utility for Payshift."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")
    from django.core.management import execute_from_command_line

    import payshift.celery  # noqa: F401  (the Celery app commands and the Django Q cluster publish with)

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
