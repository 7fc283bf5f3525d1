"""The peer's only route: paystack-django's own webhook URLconf."""

from django.urls import include, path

urlpatterns = [path("paystack/", include("djpaystack.webhooks.urls"))]
