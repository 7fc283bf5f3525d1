"""Customer-facing and operational views: checkout start, gateway callback, result page, health, metrics."""

from __future__ import annotations

import hmac
import logging
import os

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from . import selectors, services
from .gateways.base import GatewayError
from .gateways.registry import UnknownGatewayError, gateway_get, gateway_names
from .models import Payment, TransitionSource

logger = logging.getLogger("payment.views")


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The demo page: start a payment on the sandbox checkout and watch recent payments."""
    return render(request, "payment/home.html", {
        "gateways": gateway_names(),
        "payments": selectors.payment_recent(limit=15),
        "sandbox": "127.0.0.1" in settings.PAYSTACK_BASE_URL or "localhost" in settings.PAYSTACK_BASE_URL,
    })


@require_http_methods(["POST"])
def checkout(request: HttpRequest) -> HttpResponse:
    gateway = request.POST.get("gateway", "")
    try:
        amount = int(request.POST.get("amount", "0"))
        payment = services.payment_create(
            gateway_name=gateway, amount=amount, currency=request.POST.get("currency", "NGN")[:3],
            email=request.POST.get("email", "") or "customer@example.com",
            callback_url=request.build_absolute_uri(reverse("payment:callback", args=[gateway])),
        )
    except (ValueError, UnknownGatewayError, services.PaymentCreateError) as exc:
        return HttpResponseBadRequest(f"Cannot start the payment: {exc}")
    return redirect(payment.checkout_url)


@require_GET
def callback(request: HttpRequest, gateway: str) -> HttpResponse:
    """The customer's redirect back from the gateway. Its query proves nothing: verify, then show."""
    try:
        reference, _transaction_id = gateway_get(gateway).callback_reference(request.GET)
    except UnknownGatewayError:
        return HttpResponseBadRequest("unknown gateway")
    payment = Payment.objects.filter(reference=reference, gateway=gateway).first()
    if payment is None:
        return HttpResponseBadRequest("unknown payment reference")
    try:
        # The same locked service the webhook uses: a racing webhook and callback give one transition.
        services.payment_verify(payment.pk, source=TransitionSource.CALLBACK)
    except GatewayError as exc:
        logger.warning("callback verification failed", extra={"reference": reference, "error": str(exc)})
    return redirect("payment:result", reference=payment.reference)


@require_GET
def result(request: HttpRequest, reference: str) -> HttpResponse:
    payment = get_object_or_404(Payment, reference=reference)
    return render(request, "payment/result.html", {"payment": payment,
                                                   "notifications": payment.notifications.all()})


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: can we take webhooks safely? The database is required; a queue must take work."""
    parts = selectors.readiness()
    ready = parts["database"]["ok"] and (parts["broker"]["ok"] or parts["django_q"]["ok"])
    return JsonResponse({"status": "ready" if ready else "unavailable", "parts": parts},
                        status=200 if ready else 503)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, guarded by PAYSHIFT_METRICS_TOKEN (Bearer) or a staff session."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
    from prometheus_client import REGISTRY as default_registry

    token = settings.PAYSHIFT_METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    allowed = (token and hmac.compare_digest(given.encode(), token.encode())) or (
        request.user.is_authenticated and request.user.is_staff)
    if not allowed:
        return HttpResponse("metrics need a token or a staff session\n", status=401, content_type="text/plain")
    try:
        selectors.backlog_gauges_update()
    except DatabaseError:
        connection.close()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = default_registry
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
