"""URLs of the payment app (mounted at /payment/)."""

from django.urls import path, re_path

from . import views, webhooks

app_name = "payment"

urlpatterns = [
    # One pattern for every registered gateway: a new gateway needs no new URL (docs/adding-a-gateway.md).
    # The trailing slash is optional here: gateways do not follow the 301 APPEND_SLASH would send.
    re_path(r"^webhooks/(?P<gateway>[-a-zA-Z0-9_]+)/?$", webhooks.webhook, name="webhook"),
    # Customer pages: the token is signed over the payment's reference (payment/links.py); without it,
    # or with another payment's, both answer 404, so references cannot be enumerated.
    path("callback/<slug:gateway>/<str:token>/", views.callback, name="callback"),
    path("checkout/", views.checkout, name="checkout"),
    path("result/<str:reference>/<str:token>/", views.result, name="result"),
]
