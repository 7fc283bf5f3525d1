"""App configuration: registers system checks and signal receivers at start-up."""

from django.apps import AppConfig


class PaymentConfig(AppConfig):
    name = "payment"
    verbose_name = "Payments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
