"""ASGI entry point, for deployments that prefer an ASGI server."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")
import payshift.celery  # noqa: F401  (its Celery app is the one webhooks are published with)

application = get_asgi_application()

from payshift.paths import var_dir_prepare  # noqa: E402

var_dir_prepare()
