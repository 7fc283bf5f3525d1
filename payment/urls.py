"""URLs of the payment app (mounted at /payment/)."""

from django.urls import path

from . import views, webhooks

app_name = "payment"

urlpatterns = [
    # One pattern for every registered gateway: a new gateway needs no new URL (design.md 2).
    path("webhooks/<slug:gateway>/", webhooks.webhook, name="webhook"),
    path("callback/<slug:gateway>/", views.callback, name="callback"),
    path("checkout/", views.checkout, name="checkout"),
    path("result/<str:reference>/", views.result, name="result"),
]
