"""The HTTP edge for gateway webhooks: thin views, raw bytes in, one service call, a status code out."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from payment.conf import app_settings

from . import metrics, services
from .gateways.base import InvalidPayloadError
from .gateways.registry import UnknownGatewayError

logger = logging.getLogger("payment.webhooks")


@functools.lru_cache(maxsize=64)
def _answer_body(message: str) -> bytes:
    # The messages are this module's fixed outcomes and reasons; what JsonResponse would write.
    return json.dumps({"status": message}).encode()


def _answer(status: int, message: str) -> HttpResponse:
    return HttpResponse(_answer_body(message), status=status, content_type="application/json")


def _headers(request: HttpRequest) -> dict[str, str]:
    """The request's headers, names lower-cased: request.headers without its case-insensitive mapping, read
    straight from the WSGI environ as Django's HttpHeaders does (HTTP_* and the two unprefixed ones)."""
    headers: dict[str, str] = {}
    for key, value in request.META.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            headers[key.replace("_", "-").lower()] = value
    return headers


def client_ip(request: HttpRequest) -> str | None:
    """The peer address; X-Forwarded-For is believed only hop by hop from trusted proxies."""
    remote = request.META.get("REMOTE_ADDR") or None
    trusted = app_settings.PAYSHIFT_TRUSTED_PROXIES
    if not trusted or remote is None:
        return remote
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted]

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    if not is_trusted(remote):
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):  # walk from the nearest proxy outwards; the first untrusted hop is the client
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return None
    return remote


def _reject(gateway: str, reason: str, status: int, request: HttpRequest, **extra: object) -> HttpResponse:
    # Rejections are logged and counted, never stored: unauthenticated traffic cannot grow the database.
    metrics.EVENTS_REJECTED.labels(gateway, reason).inc()
    level = logging.ERROR if reason == "no_secret" else logging.WARNING
    logger.log(level, "webhook rejected", extra={"gateway": gateway, "reason": reason, "http_status": status,
                                                 "source_ip": request.META.get("REMOTE_ADDR"), **extra})
    return _answer(status, reason)


@csrf_exempt
def webhook(request: HttpRequest, gateway: str) -> HttpResponse:
    """POST /payment/webhooks/<gateway>/ (docs/architecture.md, the pipeline)."""

    def label() -> str:
        # Only a refusal needs the metric label: a stored webhook's counter is the service's.
        return metrics.gateway_label(gateway)

    try:
        if request.method != "POST":
            response = _reject(label(), "method_not_allowed", 405, request)
            response["Allow"] = "POST"
            return response
        limit = app_settings.PAYSHIFT_WEBHOOK_MAX_BYTES
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _reject(label(), "bad_content_length", 400, request)
        if declared > limit:
            return _reject(label(), "too_large", 413, request, size=declared)
        # Read the stream ourselves (not request.body) so the limit holds even without a Content-Length.
        body = request.read(limit + 1)
        if len(body) > limit:
            return _reject(label(), "too_large", 413, request)
        headers = _headers(request)
        result = services.webhook_receive(gateway_name=gateway, body=body, headers=headers,
                                          source_ip=client_ip(request))
    except UnknownGatewayError:
        return _reject("unknown", "unknown_gateway", 404, request)
    except services.SourceNotAllowedError:
        return _reject(label(), "source_not_allowed", 403, request)
    except services.SignatureError as exc:
        return _reject(label(), exc.reason, 401, request)
    except InvalidPayloadError as exc:
        return _reject(label(), "bad_payload", 400, request, error=str(exc)[:200])
    except DatabaseError as exc:
        # The one case where we want the gateway to retry: we could not store the event.
        logger.error("webhook not stored: database unavailable",
                     extra={"gateway": label(), "error": f"{type(exc).__name__}: {exc}"[:300]})
        metrics.EVENTS_REJECTED.labels(label(), "database_unavailable").inc()
        return _answer(503, "database_unavailable")
    except Exception:
        # Never a 500: an unexpected failure means the event may not be stored, so ask for a resend.
        logger.exception("webhook failed unexpectedly", extra={"gateway": label()})
        metrics.EVENTS_REJECTED.labels(label(), "internal_error").inc()
        return _answer(503, "try_again")
    return _answer(200, result.outcome)
