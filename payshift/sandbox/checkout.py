"""The hosted checkout page every gateway redirects customers to: a channel choice and one button per outcome."""

from __future__ import annotations

import logging
from html import escape
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from payshift.sandbox.gateway import SandboxGateway
from payshift.sandbox.money import format_major
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Checkout

log = logging.getLogger("sandbox")
_FINAL = ("success", "reversed")
# Before any button is pressed the page shows this, whatever the gateway's API would report (Paystack's verify
# says "abandoned" for an untouched checkout, which reads like an outcome on a page nobody has used yet).
AWAITING = "awaiting payment"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}}dt{{font-weight:bold}}
button{{margin:.3rem;padding:.6rem 1rem}}.mode{{color:#a00}}</style></head>
<body><h1>{title}</h1>
<p class="mode" id="mode">{mode} mode &middot; local sandbox, no real money moves</p>
{content}
</body></html>"""


def _page(title: str, content: str, mode: str = "test", status: int = 200) -> HTMLResponse:
    html = _PAGE.format(title=escape(title), mode=escape(mode.upper()), content=content)
    return HTMLResponse(html, status_code=status)


def _details(checkout: Checkout) -> str:
    rows = (
        ("Amount", f"{format_major(checkout.amount, checkout.currency)}", "amount"),
        ("Currency", checkout.currency, "currency"),
        ("Reference", checkout.reference, "reference"),
        ("Email", checkout.email, "email"),
        ("Status", _shown_status(checkout), "status"),
    )
    items = "".join(
        f'<dt>{escape(label)}</dt><dd id="{key}">{escape(value)}</dd>' for label, value, key in rows
    )
    return f"<dl>{items}</dl>"


def _shown_status(checkout: Checkout) -> str:
    if not checkout.customer_acted and checkout.status in ("abandoned", "pending"):
        return AWAITING
    return checkout.status


def _channels(gateway: SandboxGateway, checkout: Checkout) -> tuple[str, ...]:
    return checkout.channels or gateway.channels


def _channel_picker(gateway: SandboxGateway, checkout: Checkout) -> str:
    options = "".join(
        f'<option value="{escape(channel)}">{escape(channel)}</option>' for channel in _channels(gateway, checkout)
    )
    return f'<label for="channel">Pay with</label> <select name="channel" id="channel">{options}</select> '


def _find(request: Request) -> tuple[Runtime, Checkout | None]:
    runtime: Runtime = request.app.state.runtime
    with runtime.store.lock:
        return runtime, runtime.store.checkouts_by_code.get(request.path_params["access_code"])


async def checkout_page(request: Request) -> Response:
    runtime, checkout = _find(request)
    if checkout is None:
        return _page("Checkout not found", "<p>This payment link is not valid.</p>", status=404)
    gateway = runtime.registry[checkout.gateway]
    if checkout.status in _FINAL:
        form = '<p id="done">This transaction has already been paid.</p>'
    else:
        buttons = "".join(
            f'<button type="submit" name="action" value="{escape(action)}" id="{escape(action)}">'
            f"{escape(text)}</button>"
            for action, text in gateway.checkout_actions
        )
        picker = _channel_picker(gateway, checkout)
        form = f'<form method="post" action="{escape(request.url.path)}">{picker}{buttons}</form>'
    return _page(f"{gateway.label} checkout", _details(checkout) + form, mode=checkout.mode)


async def checkout_submit(request: Request) -> Response:
    runtime, checkout = _find(request)
    if checkout is None:
        return _page("Checkout not found", "<p>This payment link is not valid.</p>", status=404)
    # Plain urlencoded form parsing: avoids a python-multipart dependency for one field.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    action = (form.get("action") or [""])[0]
    channel = (form.get("channel") or [""])[0]
    gateway = runtime.registry[checkout.gateway]
    if action not in {name for name, _text in gateway.checkout_actions}:
        log.info("sandbox checkout %s: unknown action %r", checkout.reference, action)
        return _page("Bad request", f"<p>Unknown action {escape(action)!s}.</p>", checkout.mode, 400)
    if channel and channel not in _channels(gateway, checkout):
        log.info("sandbox checkout %s: channel %r not offered", checkout.reference, channel)
        return _page("Bad request", f"<p>Channel {escape(channel)!s} is not offered.</p>", checkout.mode, 400)
    if checkout.status in _FINAL:
        return _page("Already paid", "<p>This transaction has already been paid.</p>", checkout.mode, 409)
    with runtime.store.lock:
        checkout.customer_acted = True
        if channel:
            checkout.channel = channel
    query = gateway.complete_checkout(runtime, checkout, action)
    if not checkout.callback_url:
        # No callback configured: show the outcome instead of redirecting.
        return _page(f"{gateway.label} checkout complete", _details(checkout), checkout.mode)
    return RedirectResponse(_with_query(checkout.callback_url, query), status_code=302)


def _with_query(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


ROUTES = [
    Route("/checkout/{access_code}", checkout_page, methods=["GET"]),
    Route("/checkout/{access_code}", checkout_submit, methods=["POST"]),
]
