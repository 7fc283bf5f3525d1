"""URLs of the payment app (mounted at /payment/)."""

from django.urls import path, re_path

from . import views, webhooks

app_name = "payment"

urlpatterns = [
    # One pattern for every registered gateway: a new gateway needs no new URL (design.md 2).
    # The trailing slash is optional here: gateways do not follow the 301 APPEND_SLASH would send.
    re_path(r"^webhooks/(?P<gateway>[-a-zA-Z0-9_]+)/?$", webhooks.webhook, name="webhook"),
    path("callback/<slug:gateway>/", views.callback, name="callback"),
    path("checkout/", views.checkout, name="checkout"),
    path("result/<str:reference>/", views.result, name="result"),
]
