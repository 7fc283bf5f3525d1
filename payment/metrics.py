"""Prometheus metrics (prometheus-client). Set PROMETHEUS_MULTIPROC_DIR when several processes serve."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Every label value must come from a bounded set we define (registry names, fixed reasons, HTTP status
# codes), never from the request: each new value is a new time series kept until the process exits, so
# `/payment/webhooks/<random>/` must not be able to mint one per name (payment/tests/test_customer_pages.py).
UNKNOWN_GATEWAY = "unknown"


def gateway_label(name: str) -> str:
    """The gateway label for a name taken from a URL: a registered gateway's name, else "unknown"."""
    # The registry's gateways report API calls here (gateways.base imports this module): a real cycle.
    from .gateways.registry import gateway_names  # noqa: PLC0415

    return name if name in gateway_names() else UNKNOWN_GATEWAY

EVENTS_RECEIVED = Counter(
    "payshift_webhook_events_received_total", "Authentic webhook events stored", ["gateway", "event"]
)
EVENTS_REJECTED = Counter(
    "payshift_webhook_requests_rejected_total", "Webhook requests refused, by reason", ["gateway", "reason"]
)
EVENTS_DUPLICATE = Counter(
    "payshift_webhook_events_duplicate_total", "Deliveries answered as duplicates", ["gateway"]
)
EVENTS_DISPATCHED = Counter(
    "payshift_webhook_events_dispatched_total", "Events handed to a queue, by path", ["path"]
)
EVENTS_PROCESSED = Counter(
    "payshift_webhook_events_processed_total", "Events finished, by final event status", ["gateway", "status"]
)
EVENTS_FAILED = Counter(
    "payshift_webhook_event_failures_total", "Processing attempts that failed", ["gateway", "transient"]
)
PROCESS_LATENCY = Histogram(
    "payshift_webhook_receive_to_processed_seconds",
    "Time from receipt to processed",
    ["gateway"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
GATEWAY_API_SECONDS = Histogram(
    "payshift_gateway_api_seconds", "Gateway API call latency", ["gateway", "endpoint"]
)
GATEWAY_API_ERRORS = Counter(
    "payshift_gateway_api_errors_total", "Gateway API call failures", ["gateway", "endpoint", "kind"]
)

# Gauges are computed from the database when /metrics is scraped (cheap indexed queries).
INBOX_BACKLOG = Gauge("payshift_inbox_backlog", "Events not yet finished", ["status"],
                      multiprocess_mode="livemostrecent")
OLDEST_UNPROCESSED_SECONDS = Gauge("payshift_inbox_oldest_unprocessed_seconds", "Age of the oldest unfinished event",
                                   multiprocess_mode="livemostrecent")
OLDEST_PENDING_PAYMENT_SECONDS = Gauge("payshift_oldest_pending_payment_seconds", "Age of the oldest pending payment",
                                       multiprocess_mode="livemostrecent")
