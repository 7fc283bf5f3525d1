"""The hosted checkout page both gateways redirect customers to, with one button per outcome."""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from payshift.sandbox import flutterwave, paystack
from payshift.sandbox.money import format_major
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Checkout

Completer = Callable[[Runtime, Checkout, str], list[tuple[str, str]]]

# One entry per gateway: its buttons and what pressing one does.
_GATEWAYS: dict[str, tuple[tuple[tuple[str, str], ...], Completer, str]] = {
    paystack.NAME: (paystack.CHECKOUT_ACTIONS, paystack.complete_checkout, "Paystack"),
    flutterwave.NAME: (flutterwave.CHECKOUT_ACTIONS, flutterwave.complete_checkout, "Flutterwave"),
}
_FINAL = ("success", "reversed")

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
        ("Status", checkout.status, "status"),
    )
    items = "".join(
        f'<dt>{escape(label)}</dt><dd id="{key}">{escape(value)}</dd>' for label, value, key in rows
    )
    return f"<dl>{items}</dl>"


def _find(request: Request) -> tuple[Runtime, Checkout | None]:
    runtime: Runtime = request.app.state.runtime
    with runtime.store.lock:
        return runtime, runtime.store.checkouts_by_code.get(request.path_params["access_code"])


async def checkout_page(request: Request) -> Response:
    _runtime, checkout = _find(request)
    if checkout is None:
        return _page("Checkout not found", "<p>This payment link is not valid.</p>", status=404)
    actions, _complete, label = _GATEWAYS[checkout.gateway]
    if checkout.status in _FINAL:
        form = '<p id="done">This transaction has already been paid.</p>'
    else:
        buttons = "".join(
            f'<button type="submit" name="action" value="{escape(action)}" id="{escape(action)}">'
            f"{escape(text)}</button>"
            for action, text in actions
        )
        form = f'<form method="post" action="{escape(request.url.path)}">{buttons}</form>'
    return _page(f"{label} checkout", _details(checkout) + form, mode=checkout.mode)


async def checkout_submit(request: Request) -> Response:
    runtime, checkout = _find(request)
    if checkout is None:
        return _page("Checkout not found", "<p>This payment link is not valid.</p>", status=404)
    # Plain urlencoded form parsing: avoids a python-multipart dependency for one field.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    action = (form.get("action") or [""])[0]
    actions, complete, label = _GATEWAYS[checkout.gateway]
    if action not in {name for name, _text in actions}:
        return _page("Bad request", f"<p>Unknown action {escape(action)!s}.</p>", checkout.mode, 400)
    if checkout.status in _FINAL:
        return _page("Already paid", "<p>This transaction has already been paid.</p>", checkout.mode, 409)
    query = complete(runtime, checkout, action)
    if not checkout.callback_url:
        # No callback configured: show the outcome instead of redirecting.
        return _page(f"{label} checkout complete", _details(checkout), checkout.mode)
    return RedirectResponse(_with_query(checkout.callback_url, query), status_code=302)


def _with_query(url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


ROUTES = [
    Route("/checkout/{access_code}", checkout_page, methods=["GET"]),
    Route("/checkout/{access_code}", checkout_submit, methods=["POST"]),
]
