"""WSGI entry point of the demo project: `payshift.wsgi:application`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")
import payshift.celery  # noqa: F401  (its Celery app is the one webhooks are published with)

application = get_wsgi_application()

from payshift.paths import var_dir_prepare  # noqa: E402

var_dir_prepare()
