"""Customer-facing and operational views: checkout start, gateway callback, result page, health, metrics."""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import DatabaseError, connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client import REGISTRY as default_registry

from payment.conf import app_settings

from . import forms, health, links, selectors, services
from .gateways.base import GatewayError
from .gateways.registry import UnknownGatewayError, gateway_get
from .models import Payment, TransitionSource

logger = logging.getLogger("payment.views")

# References of the payments started from this browser session: the only list the demo home page shows.
SESSION_PAYMENTS = "payment.started"
SESSION_PAYMENTS_MAX = 10

View = Callable[..., HttpResponse]


def demo_pages_only(view: View) -> View:
    """404 unless PAYSHIFT_DEMO_PAGES: in production the host application starts payments, and an
    anonymous form that writes Payment rows would let anyone grow the table (docs/reliability.md)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not app_settings.PAYSHIFT_DEMO_PAGES:
            raise Http404("demo pages are off")
        return view(request, *args, **kwargs)

    return wrapped


def _bad_request(message: str) -> HttpResponse:
    # Plain text: a message built from request input must never be rendered as HTML.
    return HttpResponse(message + "\n", status=400, content_type="text/plain; charset=utf-8")


def _home(request: HttpRequest, form: forms.CheckoutForm, *, status: int = 200) -> HttpResponse:
    return render(request, "payment/home.html", {
        "form": form,
        "payments": selectors.payment_customer_list(list(request.session.get(SESSION_PAYMENTS, []))),
        "sandbox": "127.0.0.1" in app_settings.PAYSTACK_BASE_URL or "localhost" in app_settings.PAYSTACK_BASE_URL,
    }, status=status)


@require_GET
@demo_pages_only
def home(request: HttpRequest) -> HttpResponse:
    """The demo page: start a payment on the sandbox checkout; list the ones this browser started."""
    return _home(request, forms.CheckoutForm(auto_id="%s"))


@require_POST
@demo_pages_only
def checkout(request: HttpRequest) -> HttpResponse:
    """The demo form's POST: create the payment, then send the visitor to the gateway's checkout."""
    form = forms.CheckoutForm(request.POST, auto_id="%s")
    if not form.is_valid():
        logger.warning("checkout refused", extra={"errors": form.errors.get_json_data()})
        return _home(request, form, status=400)
    data = form.cleaned_data
    gateway = data["gateway"]
    try:
        payment = services.payment_create(
            gateway_name=gateway, amount=data["amount"], currency=data["currency"], email=data["email"],
            callback_url=lambda reference: links.payment_callback_link(gateway, reference, request=request),
        )
    except services.PaymentCreateError:
        # The service logged the gateway's answer; the visitor gets no gateway error text.
        return HttpResponse("The gateway cannot start this payment right now; please try again.\n",
                            status=503, content_type="text/plain; charset=utf-8")
    started = [*request.session.get(SESSION_PAYMENTS, []), payment.reference]
    request.session[SESSION_PAYMENTS] = started[-SESSION_PAYMENTS_MAX:]
    return redirect(payment.checkout_url)


@require_GET
def callback(request: HttpRequest, gateway: str, token: str) -> HttpResponse:
    """The customer's redirect back from the gateway. Its query proves nothing: verify, then show.

    The path carries the token we signed over the reference when creating the checkout, so only the
    customer's own link leads to a result page (and to a gateway call).
    """
    try:
        gateway_obj = gateway_get(gateway)
    except UnknownGatewayError as exc:
        raise Http404("unknown gateway") from exc
    form = forms.CallbackQueryForm(request.GET, gateway=gateway_obj)
    if not form.is_valid():
        logger.warning("callback refused: bad query", extra={"gateway": gateway,
                                                            "errors": form.errors.get_json_data()})
        return _bad_request("Bad callback query: " + "; ".join(
            f"{field}: {' '.join(str(m) for m in messages)}" for field, messages in form.errors.items()))
    reference = form.cleaned_data["reference"]
    payment = None
    if links.payment_link_token_valid(reference, token):  # checked before any lookup: no enumeration
        payment = Payment.objects.filter(reference=reference, gateway=gateway).first()
    if payment is None:
        logger.warning("callback refused: token or reference", extra={"gateway": gateway, "reference": reference})
        raise Http404("no such payment link")
    try:
        # The same locked service the webhook uses: a racing webhook and callback give one transition.
        services.payment_verify(payment.pk, source=TransitionSource.CALLBACK,
                                min_interval=app_settings.PAYSHIFT_CALLBACK_VERIFY_INTERVAL_SECONDS,
                                timeout=app_settings.PAYSHIFT_CALLBACK_VERIFY_TIMEOUT_SECONDS)
    except GatewayError as exc:
        logger.warning("callback verification failed", extra={"reference": reference, "error": str(exc)})
    return redirect(links.payment_result_link(payment.reference))


@never_cache
@require_GET
def result(request: HttpRequest, reference: str, token: str) -> HttpResponse:
    """A payment's page for whoever holds its signed link; anything else is 404 (no enumeration)."""
    view = selectors.payment_customer_view(reference) if links.payment_link_token_valid(reference, token) else None
    if view is None:
        raise Http404("no such payment link")
    response = render(request, "payment/result.html", {"payment": view})
    # The token is in the URL: never hand it to another site in a Referer header.
    response["Referrer-Policy"] = "no-referrer"
    return response


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Dependencies are /readyz's business."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: can we take webhooks safely? The database is required; a queue must take work."""
    parts = health.readiness()
    ready = parts["database"]["ok"] and (parts["broker"]["ok"] or parts["django_q"]["ok"])
    return JsonResponse({"status": "ready" if ready else "unavailable", "parts": parts},
                        status=200 if ready else 503)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition, guarded by PAYSHIFT_METRICS_TOKEN (Bearer) or a staff session."""

    token = app_settings.PAYSHIFT_METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    allowed = (token and hmac.compare_digest(given.encode(), token.encode())) or (
        request.user.is_authenticated and request.user.is_staff)
    if not allowed:
        return HttpResponse("metrics need a token or a staff session\n", status=401, content_type="text/plain")
    try:
        health.backlog_gauges_update()
    except DatabaseError:
        connection.close()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = default_registry
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
