"""App configuration: registers the system checks and Payshift's periodic tasks for any Celery beat."""

from django.apps import AppConfig


class PaymentConfig(AppConfig):
    name = "payment"
    verbose_name = "Payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing registers: the system checks, and the receiver that adds Payshift's periodic tasks to
        # whichever beat starts. Nothing here touches a Celery app (asking for one before the project's app
        # exists would leave Celery's unconfigured fallback as the app of every other thread).
        from . import checks, periodic  # noqa: F401, PLC0415  (Django: registration belongs in ready())
