"""The gateway interface and the neutral dataclasses every gateway module speaks."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import email.utils
import hashlib
import http.cookiejar
import json
import math
import os
import threading
import time
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from django.conf import settings

from payment import metrics
from payment.conf import app_settings

from . import ratelimit


class GatewayError(Exception):
    """A call to a gateway's API did not give an answer we can act on."""

    transient: bool = False

    def __init__(self, message: str, *, http_status: int | None = None, sent: bool = True) -> None:
        super().__init__(message)
        # The HTTP status the gateway answered with (None: no answer, or one we could not read). Only a 4xx,
        # or a request never sent (`sent=False`, e.g. no key configured), is a clear refusal: a refund that
        # met anything else may have been made.
        self.http_status = http_status
        self.sent = sent

    @property
    def refused(self) -> bool:
        """The request certainly had no effect: never sent, or answered with a 4xx other than 429."""
        if not self.sent:
            return True
        return self.http_status is not None and 400 <= self.http_status < 500 and self.http_status != 429


class TransientGatewayError(GatewayError):
    """Network error, timeout, 5xx or 429: retrying later can fix it."""

    transient = True

    def __init__(self, message: str, *, request_sent: bool = True, http_status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, http_status=http_status, sent=request_sent)
        # False when the gateway certainly did not act on it (connection refused, 429): a non-idempotent
        # call such as a refund may be re-sent only then.
        self.request_sent = request_sent
        # Seconds the gateway asked us to wait (a 429's Retry-After), or the rate limiter's own wait.
        self.retry_after = retry_after


class PermanentGatewayError(GatewayError):
    """4xx (other than 429) or an answer of the wrong shape: retrying will not fix it."""


class InvalidPayloadError(ValueError):
    """An authentic body that is not the JSON this gateway sends."""


class NotFoundAtGatewayError(PermanentGatewayError):
    """The gateway does not know this transaction (yet)."""


class UnbuildableEventError(ValueError):
    """`build_test_webhook` was asked for an event it cannot imitate faithfully (test_webhook refuses it)."""


# Neutral outcome values, shared by every gateway (a subset of payment statuses plus "pending").
OUTCOME_SUCCESS = "success"
OUTCOME_FAILED = "failed"
OUTCOME_ABANDONED = "abandoned"
OUTCOME_REVERSED = "reversed"
OUTCOME_PENDING = "pending"


@dataclass(frozen=True)
class ParsedEvent:
    """A webhook body normalised: what it claims, never what we trust (the verify API decides)."""

    gateway: str
    event: str
    kind: str  # models.EventKind value: "charge", "refund" or "other"
    dedupe_key: str
    reference: str = ""
    gateway_transaction_id: str = ""
    status: str = ""
    amount: int | None = None
    currency: str = ""
    mode: str = ""
    # Refund events: the gateway's refund REFERENCE ("" while the gateway has none yet) and its refund id,
    # two different identifiers that a refund may carry; `status` is then a RefundStatus value.
    refund_reference: str = ""
    outcome: str = ""  # what the body claims, as an OUTCOME_* value ("" when it claims nothing)
    refund_id: str = ""


@dataclass(frozen=True)
class Verification:
    """The gateway API's answer about one transaction (the only source of truth for value)."""

    reference: str
    gateway_transaction_id: str
    outcome: str  # one of the OUTCOME_* values
    amount: int  # minor units
    currency: str
    mode: str
    raw_status: str = ""
    paid_at: str = ""


@dataclass(frozen=True)
class CheckoutSession:
    checkout_url: str
    gateway_reference: str = ""


@dataclass(frozen=True)
class RefundResult:
    """One refund as the gateway's API reports it."""

    gateway_refund_id: str
    status: str  # models.RefundStatus value
    amount: int | None = None  # minor units; None when the answer does not say
    refund_reference: str = ""  # the gateway's own reference for the refund, distinct from its id
    currency: str = ""


@dataclass(frozen=True)
class RecordedAnswer:
    """One API answer as the gateway sends it, and the request that gets it (the contract suite mocks it).

    payment/tests/test_gateway_contract.py answers `method url` with `body` and checks what the gateway's
    client makes of it, so the suite needs to know nothing about the gateway's paths or shapes.
    """

    method: str
    url: str  # absolute, under the configured base URL; no query string
    body: dict[str, Any]
    status: int = 200


@dataclass
class WebhookRequest:
    """What the test_webhook command and the benchmarks need to imitate a delivery."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_loads_strict(body: bytes) -> Any:
    """Parse JSON the way money needs it: Decimal not float, no NaN/Infinity, no duplicate keys."""

    def _no_constants(name: str) -> Any:
        raise InvalidPayloadError(f"JSON constant {name} is not allowed")

    def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                # Two parsers could disagree on which value wins: refuse rather than guess.
                raise InvalidPayloadError(f"duplicate JSON key {key!r}")
            obj[key] = value
        return obj

    try:
        text = body.decode("utf-8")
        return json.loads(
            text, parse_float=Decimal, parse_constant=_no_constants, object_pairs_hook=_no_duplicates
        )
    except InvalidPayloadError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidPayloadError(f"body is not valid JSON: {type(exc).__name__}") from exc


def _json_number(value: object) -> object:
    if isinstance(value, Decimal):
        if value == value.to_integral_value():
            return int(value)
        # Wire formats want a JSON number (Flutterwave's major units, e.g. 1500.5). A float's repr is the
        # shortest text that round-trips, so for money-sized values the text is exactly the Decimal's.
        as_float = float(value)
        if Decimal(repr(as_float)) != value:
            raise ValueError(f"{value} cannot be written exactly as a JSON number")
        return as_float
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def json_dumps(payload: object) -> bytes:
    """Compact JSON bytes as gateways send them; Decimal amounts become exact JSON numbers."""
    return json.dumps(payload, separators=(",", ":"), default=_json_number).encode()


def envelope(body: bytes, name_keys: tuple[str, ...] = ("event",)) -> tuple[str, dict[str, Any]]:
    """(event name, data object) of a `{"event": ..., "data": {...}}` webhook, or InvalidPayloadError."""
    payload = json_loads_strict(body)
    if not isinstance(payload, dict):
        raise InvalidPayloadError("envelope is not a JSON object")
    name = next((payload[k] for k in name_keys if k in payload), None)
    data = payload.get("data")
    if not isinstance(name, str) or not name or len(name) > 100:
        raise InvalidPayloadError("envelope without a string 'event'")
    if not isinstance(data, dict):
        raise InvalidPayloadError("envelope without a 'data' object")
    return name, data


def ignored_event(gateway: str, name: str, body: bytes, reference: object) -> ParsedEvent:
    """An authentic event we do not act on: stored as `ignored`, deduplicated by its exact bytes."""
    return ParsedEvent(gateway=gateway, event=name, kind="other",
                       dedupe_key=f"{name}:{hashlib.sha256(body).hexdigest()}", reference=as_str(reference))


def as_str(value: object, limit: int = 100) -> str:
    """A scalar from a payload as a bounded string ('' for null/objects): for display-only text."""
    if value is None or isinstance(value, dict | list | bool):
        return ""
    return str(value)[:limit]


def bounded_key(text: str, limit: int) -> str:
    """`text` itself when it fits in `limit` characters, else a prefix plus the SHA-256 of the whole.

    Cutting an identifier to fit a column makes two long ones that share a prefix the same key: a
    webhook for one payment could then match another, or two refunds share an idempotency key.
    """
    if len(text) <= limit:
        return text
    # At least 128 bits of the digest, at most all of it; the prefix keeps the key readable.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:min(64, max(32, limit // 2))]
    return f"{text[:max(0, limit - len(digest) - 1)]}~{digest}"


def as_id(value: object, limit: int = 100) -> str:
    """A scalar identifier from a payload ('' for null/objects), never truncated into a collision."""
    if value is None or isinstance(value, dict | list | bool):
        return ""
    return bounded_key(str(value), limit)


# How long a call waits for the rate limit (the client's slot, or a 429's Retry-After) before it fails as a
# transient error that the caller's retry schedule takes over; and how often a 429 is re-sent in place.
RATE_LIMIT_MAX_WAIT_SECONDS = 10.0
RATE_LIMITED_TRIES = 3


class _NoCookies(http.cookiejar.CookieJar):
    """The gateway clients' cookie jar, which keeps nothing: the gateways' APIs authenticate every call by its
    key, a cookie set by one answer (a CDN's, say) has no business riding along on the next, and reading each
    answer's Set-Cookie costs the worker about 4 % of its CPU per verification (bench/FINDINGS.md)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


# Guards the creation of each gateway instance's HTTP client (Gateway._client).
_CLIENT_LOCK = threading.Lock()

# What an API call passes on to httpx (api_request's keyword arguments); anything else goes through the client.
_DIRECT_ARGUMENTS = frozenset({"content", "json", "params", "timeout"})


def _environment_names_a_proxy() -> bool:
    """Whether the environment names an HTTP proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, as httpx reads them):
    then the client mounts it, and every call goes through the client."""
    return bool({"http", "https", "all"} & urllib.request.getproxies().keys())


def _direct_send(direct: tuple[httpx.Client, httpx.HTTPTransport], method: str, url: str, *,
                 headers: Mapping[str, str], kwargs: Mapping[str, Any]) -> httpx.Response:
    """One call as client.request makes it for a client of ours (its headers and timeout, no redirects), handed
    straight to its transport: the client's layers for auth, redirects, event hooks and cookies do nothing for
    these calls and cost about a tenth of a call's CPU on our side (bench/FINDINGS.md). The transport raises the same
    httpx exceptions; the answer is read and the connection back in the pool before this returns."""
    client, transport = direct
    merged = client.headers.copy()
    merged.update(headers)
    # As the client reads it: no `timeout` is its own, an explicit None is none at all.
    timeout = httpx.Timeout(kwargs["timeout"]) if "timeout" in kwargs else client.timeout
    request = httpx.Request(method, url, headers=merged, content=kwargs.get("content"), json=kwargs.get("json"),
                            params=kwargs.get("params"), extensions={"timeout": timeout.as_dict()})
    response = transport.handle_request(request)
    response.request = request
    try:
        response.read()
    finally:
        response.close()
    return response

# A 429 holds this process's calls to that gateway back for its Retry-After, but never longer than this: one
# answer asking for an hour must not stop every verification of the process for an hour (the next call past
# this bound learns the gateway's current answer).
RETRY_AFTER_HOLD_MAX_SECONDS = 60.0


def _retry_after_seconds(value: str | None) -> float:
    """A Retry-After header (delta-seconds or an HTTP date) in seconds; 1 s when absent or unreadable."""
    if value:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                return 1.0
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return 1.0


# A per-call ceiling on gateway API time, set around a call by code that serves a person waiting on a page
# (the customer's callback): the workers keep the long PAYSHIFT_HTTP_READ_TIMEOUT. A context variable, so
# every gateway's methods honour it without a timeout parameter of their own.
_call_timeout: contextvars.ContextVar[float | None] = contextvars.ContextVar("gateway_call_timeout", default=None)


@contextlib.contextmanager
def api_timeout(seconds: float) -> Iterator[None]:
    """Bound every gateway API call made inside the block to `seconds` (connect and each read)."""
    token = _call_timeout.set(seconds)
    try:
        yield
    finally:
        _call_timeout.reset(token)


class Gateway(ABC):
    """One payment gateway. Subclasses live in one folder each (payment/gateways/<name>/, or a package named in
    PAYSHIFT_GATEWAY_MODULES) and register themselves."""

    name: ClassVar[str]
    #: Header names whose values are secrets or signatures: never stored or logged.
    secret_headers: ClassVar[frozenset[str]] = frozenset()
    #: Published webhook source addresses, enforced only when the operator enables the allowlist.
    published_ips: ClassVar[tuple[str, ...]] = ()
    #: The setting that holds the webhook secret(s), named in system-check hints.
    secret_setting: ClassVar[str] = ""
    #: The event a paid charge sends (test_webhook's default, the bench's and the contract suite's payloads).
    charge_event: ClassVar[str] = ""
    #: Body fields holding card data or reusable tokens: kept in the stored bytes, never shown to a person.
    redacted_fields: ClassVar[frozenset[str]] = frozenset()
    #: Clearly marked demo credentials, accepted only by the local sandbox (the system checks refuse them in
    #: production): setting name -> value. The dev stack, the bench and the chaos run start from these.
    demo_settings: ClassVar[dict[str, str]] = {}
    #: Where this gateway's API lives under the sandbox's root URL (its base URL setting in demo mode).
    sandbox_path: ClassVar[str] = ""
    #: The event a processed refund sends ("" = the gateway sends none): the contract suite builds it.
    refund_event: ClassVar[str] = ""
    #: False where the webhook's proof is a shared secret sent back verbatim: it proves who sent the body,
    #: not what the body says, so a tampered body still verifies and only the verify API is evidence.
    body_signed: ClassVar[bool] = True
    #: The settings the test suite gives this gateway (payment/tests/conftest.py, `gateway_settings`):
    #: setting name -> value, its secrets and a base URL that only respx answers, never a reachable host.
    test_settings: ClassVar[dict[str, str | list[str]]] = {}

    # -- webhooks --------------------------------------------------------------------------------
    @abstractmethod
    def webhook_secrets(self) -> list[str]:
        """The configured secrets that may authenticate a webhook (empty = refuse everything)."""

    @abstractmethod
    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """True only if the raw body is authentic; must fail closed and compare in constant time."""

    @abstractmethod
    def parse_event(self, body: bytes) -> ParsedEvent:
        """Normalise an authentic body; raise InvalidPayloadError for JSON we don't expect."""

    @abstractmethod
    def sign_webhook(self, body: bytes) -> dict[str, str]:
        """Headers the gateway would send with this body (first secret signs)."""

    @abstractmethod
    def build_test_webhook(self, *, event: str, reference: str, transaction_id: str, status: str,
                           amount: int, currency: str, mode: str, email: str) -> dict[str, Any]:
        """A realistic payload in this gateway's wire format, for test_webhook and benchmarks."""

    # -- API -------------------------------------------------------------------------------------
    @abstractmethod
    def verify_transaction(self, *, reference: str, gateway_transaction_id: str = "") -> Verification:
        """Ask the gateway's API what really happened; raise a GatewayError subclass otherwise."""

    @abstractmethod
    def initialize_checkout(self, *, reference: str, amount: int, currency: str, email: str,
                            callback_url: str, metadata: Mapping[str, Any]) -> CheckoutSession:
        """Create a hosted checkout for a payment row that already exists."""

    @abstractmethod
    def refund(self, *, reference: str, gateway_transaction_id: str, amount: int, currency: str,
               note: str) -> RefundResult:
        """Ask the gateway to refund `amount` minor units of a settled transaction."""

    @abstractmethod
    def callback_reference(self, query: Mapping[str, str]) -> tuple[str, str]:
        """(reference, gateway transaction id) from the customer's redirect back to us."""

    def refund_fetch(self, gateway_refund_id: str) -> RefundResult | None:
        """The refund's current state, for polling; None where the gateway has no such endpoint."""
        return None

    def refunds_for_transaction(self, *, reference: str, gateway_transaction_id: str) -> list[RefundResult] | None:
        """Every refund the gateway holds for one charge (None = no such endpoint).

        For settling a refund whose POST outcome was unknown, when we may not know its id. The list is
        complete or the call raises: a partial list could read as "never refunded" and invite a second POST.
        """
        return None

    def key_mode(self) -> str:
        """"test" or "live", from the API key in use."""
        return "test"

    def configured_key_modes(self) -> dict[str, set[str]]:
        """Setting name -> the modes of the keys it lists, for the mixed test/live keys system check."""
        return {}

    # -- recorded examples, for the contract suite (payment/tests/test_gateway_contract.py) ---------------
    def example_verify_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> RecordedAnswer:
        """The verify API's answer for a paid charge, as `verify_transaction(reference=, gateway_transaction_id=)`
        fetches it: the suite expects reference, transaction id, amount, currency and outcome success back."""
        raise NotImplementedError(f"{type(self).__name__} records no verify answer (docs/adding-a-gateway.md)")

    def example_refund_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> RecordedAnswer:
        """The refund API's answer to `refund(...)` of `amount`: the suite expects an id, that amount and currency."""
        raise NotImplementedError(f"{type(self).__name__} records no refund answer (docs/adding-a-gateway.md)")

    def example_callback_query(self, *, reference: str, transaction_id: str) -> dict[str, str]:
        """The query string the gateway appends when it sends the customer back (`callback_reference` reads it)."""
        raise NotImplementedError(f"{type(self).__name__} records no callback query (docs/adding-a-gateway.md)")

    # -- the gateway's own settings ------------------------------------------------------------------
    def setting(self, name: str, default: Any = "") -> Any:
        """One of this gateway's settings: Payshift's table (payment/conf.py) for the names it holds, else the
        Django setting, else the environment variable, else `default`.

        A gateway outside payment/gateways/ (PAYSHIFT_GATEWAY_MODULES) brings its own setting names; read
        here, they need no line in payment/conf.py. Read on every call: tests and key rotation change them.
        """
        if name in app_settings.names():
            return getattr(app_settings, name)
        if hasattr(settings, name):
            return getattr(settings, name)
        return os.environ.get(name, default)

    def setting_list(self, name: str) -> list[str]:
        """A setting that holds keys: one string, a comma list or a list (rotation), blanks dropped."""
        value = self.setting(name, [])
        parts = value.split(",") if isinstance(value, str) else value or []
        return [str(part).strip() for part in parts if str(part).strip()]

    # -- shared HTTP plumbing ----------------------------------------------------------------------
    base_url_setting: ClassVar[str]
    #: The real API's root, for a gateway whose base URL setting payment/conf.py does not hold.
    base_url_default: ClassVar[str] = ""

    def base_url(self) -> str:
        """The configured root of the gateway's API, with one trailing slash."""
        return str(self.setting(self.base_url_setting, self.base_url_default)).rstrip("/") + "/"

    def api_key(self) -> str:
        raise NotImplementedError

    def _client(self) -> httpx.Client:
        # One client per gateway instance (connection pooling); explicit timeouts, never the default. Created
        # under a lock: the reconciliation's threads start together, and each would otherwise make its own.
        client: httpx.Client | None = getattr(self, "_http", None)
        if client is not None:
            return client
        with _CLIENT_LOCK:
            client = getattr(self, "_http", None)
            if client is None:
                timeout = httpx.Timeout(
                    app_settings.PAYSHIFT_HTTP_READ_TIMEOUT, connect=app_settings.PAYSHIFT_HTTP_CONNECT_TIMEOUT
                )
                # Our own transport, which _send also uses directly, unless the environment names a proxy: a
                # client given a transport mounts none, so then the client makes its own and every call goes
                # through it, proxied as httpx does.
                # (Credentials in the base URL are the client's too: it would turn them into Basic auth.)
                base_url = httpx.URL(self.base_url())
                transport = None if _environment_names_a_proxy() or base_url.userinfo else httpx.HTTPTransport()
                client = httpx.Client(
                    base_url=base_url,
                    timeout=timeout,
                    headers={"User-Agent": "payshift/0.1"},
                    cookies=_NoCookies(),
                    transport=transport,
                )
                self._direct = (client, transport) if transport is not None else None
                self._http = client
        return client

    def api_request(self, method: str, path: str, endpoint: str, *,
                    headers_extra: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
        """Call the gateway within its rate limit; classify failures as transient or permanent; return the
        parsed JSON. A 429 is retried after its Retry-After while that fits the call's time."""
        headers = {"Authorization": f"Bearer {self.api_key()}", "Accept": "application/json",
                   **(headers_extra or {})}
        ceiling = _call_timeout.get()
        if ceiling is not None:
            kwargs.setdefault("timeout", httpx.Timeout(
                min(ceiling, app_settings.PAYSHIFT_HTTP_READ_TIMEOUT),
                connect=min(ceiling, app_settings.PAYSHIFT_HTTP_CONNECT_TIMEOUT)))
        # A person waiting on a page (the ceiling) waits no longer for a slot than for the answer.
        max_wait = min(ceiling, RATE_LIMIT_MAX_WAIT_SECONDS) if ceiling is not None else RATE_LIMIT_MAX_WAIT_SECONDS
        limiter = ratelimit.limiter_for(self.name)
        for attempt in range(1, RATE_LIMITED_TRIES + 1):
            if limiter is not None and limiter.acquire(max_wait) is None:
                metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, "throttled").inc()
                raise TransientGatewayError(f"{self.name} {endpoint}: over the client rate limit for longer than "
                                            f"{max_wait:g} s", request_sent=False, retry_after=max_wait)
            response = self._send(method, path, endpoint, headers, kwargs)
            if response.status_code != 429:
                break
            retry_after = _retry_after_seconds(response.headers.get("retry-after"))
            # A 429 certainly did nothing (request_sent=False): re-sending is safe, even for a refund. Every
            # thread of this process holds back until Retry-After, not only this one.
            if limiter is not None:
                limiter.pause(min(retry_after, RETRY_AFTER_HOLD_MAX_SECONDS))
            if attempt == RATE_LIMITED_TRIES or retry_after > max_wait:
                metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, "429").inc()
                raise TransientGatewayError(f"{self.name} {endpoint}: HTTP 429", request_sent=False,
                                            http_status=429, retry_after=retry_after)
            metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, "429_retried").inc()
            if limiter is None:
                time.sleep(retry_after)
        return self._answer(response, endpoint)

    def _send(self, method: str, path: str, endpoint: str, headers: Mapping[str, str],
              kwargs: Mapping[str, Any]) -> httpx.Response:
        started = time.perf_counter()
        outcome = "error"
        try:
            client = self._client()
            # The whole URL, not the path: httpx would parse the path and then the merged URL, per call.
            url = f"{client.base_url}{path.lstrip('/')}"
            direct: tuple[httpx.Client, httpx.HTTPTransport] | None = getattr(self, "_direct", None)
            # Straight to the transport when the client is still the one made with it (a test or a host may
            # hand the gateway another), open (a closed client refuses to send; its pool would not), and
            # nothing was added to it that only the client would honour.
            if (direct is not None and direct[0] is client and not client.is_closed and client.auth is None
                    and not client.follow_redirects and not client.params
                    and isinstance(client.cookies.jar, _NoCookies) and not any(client.event_hooks.values())
                    and kwargs.keys() <= _DIRECT_ARGUMENTS):
                response = _direct_send(direct, method, url, headers=headers, kwargs=kwargs)
            else:
                response = client.request(method, url, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            outcome = "connect"
            raise TransientGatewayError(f"{self.name} {endpoint}: cannot connect", request_sent=False) from exc
        except httpx.TimeoutException as exc:
            outcome = "timeout"
            raise TransientGatewayError(f"{self.name} {endpoint}: timed out") from exc
        except httpx.HTTPError as exc:
            outcome = "network"
            raise TransientGatewayError(f"{self.name} {endpoint}: {type(exc).__name__}") from exc
        finally:
            metrics.GATEWAY_API_SECONDS.labels(self.name, endpoint).observe(time.perf_counter() - started)
            if outcome != "error":
                metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, outcome).inc()
        return response

    def _answer(self, response: httpx.Response, endpoint: str) -> Any:
        code = response.status_code
        if code >= 500:
            metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, str(code)).inc()
            raise TransientGatewayError(f"{self.name} {endpoint}: HTTP {code}", http_status=code)
        try:
            payload = json_loads_strict(response.content)
        except InvalidPayloadError as exc:
            metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, "bad_json").inc()
            # A 2xx we cannot read is not a refusal (http_status stays None): the call may have worked.
            raise PermanentGatewayError(f"{self.name} {endpoint}: HTTP {code} with a non-JSON body",
                                        http_status=code if code >= 400 else None) from exc
        if code in (400, 404) and endpoint.startswith("verify"):
            metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, str(code)).inc()
            raise NotFoundAtGatewayError(f"{self.name} {endpoint}: HTTP {code}: {self._gateway_message(payload)}",
                                         http_status=code)
        if code >= 400:
            metrics.GATEWAY_API_ERRORS.labels(self.name, endpoint, str(code)).inc()
            raise PermanentGatewayError(f"{self.name} {endpoint}: HTTP {code}: {self._gateway_message(payload)}",
                                        http_status=code)
        if not isinstance(payload, dict):
            raise PermanentGatewayError(f"{self.name} {endpoint}: answer is not a JSON object")
        return payload

    def _gateway_message(self, payload: Any) -> str:
        """The gateway's error text for our error, minus any secret it echoes ("Invalid key sk_live_...").

        The text travels on into payment.log, event.last_error (the admin) and staff emails
        (payment/tests/test_security.py).
        """
        text = as_str(payload.get("message", "") if isinstance(payload, dict) else "", 1000)
        secrets = set(self.webhook_secrets())
        with contextlib.suppress(GatewayError):
            secrets.add(self.api_key())
        for secret in sorted(secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text[:200]
