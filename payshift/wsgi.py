"""WSGI entry point: `payshift.wsgi:application` (design.md section 2)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")

application = get_wsgi_application()
