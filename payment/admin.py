"""The support desk: find any payment, see its whole story, and act only through the services."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core import signing
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from . import services
from .gateways.base import GatewayError
from .gateways.registry import gateway_classes
from .models import (
    EventStatus,
    Notification,
    Payment,
    PaymentStatus,
    PaymentTransition,
    Refund,
    RefundStatus,
    WebhookEvent,
)

_SECRET_HEADER_HINTS = ("signature", "hash", "authorization", "cookie", "token", "secret", "key")
# Card data and reusable tokens in gateway bodies (Paystack `authorization`, Flutterwave `card`): kept in
# the stored raw bytes for replay, never shown to a person (no card data in the admin: docs/reliability.md).
# Field names that hold card data under any gateway, on top of what each gateway class declares.
_CARD_KEYS_ANY_GATEWAY = frozenset({"card_number", "cvv", "pan"})


def _card_keys() -> frozenset[str]:
    keys = set(_CARD_KEYS_ANY_GATEWAY)
    for cls in gateway_classes().values():
        keys |= cls.redacted_fields
    return frozenset(keys)


def redact_card_data(value: Any, keys: frozenset[str] | None = None) -> Any:
    keys = _card_keys() if keys is None else keys
    if isinstance(value, dict):
        return {k: ("[redacted]" if k.lower() in keys else redact_card_data(v, keys)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_card_data(v, keys) for v in value]
    return value


class ReadOnlyAdminMixin:
    """Rows here change only through services (state machine, audit rows): never by editing fields."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True


class TransitionInline(ReadOnlyInline):
    model = PaymentTransition
    fields = ("created_at", "from_status", "to_status", "source", "reason", "actor", "details", "event")
    readonly_fields = fields


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ("created_at", "amount", "currency", "status", "gateway_refund_id", "reason", "requested_by",
              "last_error")
    readonly_fields = fields


class NotificationInline(ReadOnlyInline):
    model = Notification
    fk_name = "payment"
    fields = ("created_at", "kind", "recipient", "delivered_at", "delivery_error", "message")
    readonly_fields = fields


_REFUND_TOKEN_SALT = "payment.admin.refund-form"
# A form left open longer than this is refused: its page showed a refundable amount that may be stale.
_REFUND_TOKEN_MAX_AGE = 6 * 3600


class RefundForm(forms.Form):
    refund_amount = forms.IntegerField(
        label="Refund amount", min_value=1, required=False,
        help_text="Minor units (kobo, pesewas, cents) of the currency paid. Empty = everything still refundable.")
    reason = forms.CharField(max_length=255)
    # One token per rendered form: a double submit (or a resubmitted POST) carries the same token, so it maps
    # onto the same idempotency key and returns the same refund instead of sending a second one.
    token = forms.CharField(widget=forms.HiddenInput)

    def __init__(self, *args: Any, payment: Payment, user_id: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payment = payment
        self.user_id = user_id
        if not self.is_bound:
            self.initial["token"] = signing.dumps({"p": payment.pk, "u": user_id, "n": uuid.uuid4().hex},
                                                  salt=_REFUND_TOKEN_SALT)

    def clean_token(self) -> str:
        try:
            data = signing.loads(self.cleaned_data["token"], salt=_REFUND_TOKEN_SALT, max_age=_REFUND_TOKEN_MAX_AGE)
        except signing.BadSignature as exc:
            raise forms.ValidationError("This form has expired or was altered: open it again.") from exc
        if not isinstance(data, dict) or data.get("p") != self.payment.pk or data.get("u") != self.user_id:
            raise forms.ValidationError("This form was issued for another payment or user: open it again.")
        return f"admin:{self.payment.pk}:{data.get('n')}"


class RefundSettleForm(forms.Form):
    outcome = forms.ChoiceField(choices=[(RefundStatus.PROCESSED, "The gateway made it (processed)"),
                                         (RefundStatus.FAILED, "The gateway did not make it (failed)")])
    note = forms.CharField(widget=forms.Textarea, help_text="Required: what the gateway's dashboard shows.")


class ResolveReviewForm(forms.Form):
    outcome = forms.ChoiceField(choices=[(PaymentStatus.SUCCESS, "Accept the payment (success)"),
                                         (PaymentStatus.FAILED, "Reject it (failed)")])
    note = forms.CharField(widget=forms.Textarea, help_text="Required: why, and what you checked.")


class ActionFormMixin:
    """A staff action behind its own permission: a form, one service call, a message, back to the object.
    (Not `action_form`: ModelAdmin uses that name for its bulk-actions form.)"""

    admin_site: Any
    model: Any

    def action_page(self, request: HttpRequest, *, permission: str, form: forms.Form, run: Any,
                    refusals: tuple[type[Exception], ...], back_to: str, title: str, payment: Payment,
                    submit: str) -> HttpResponse:
        if not request.user.has_perm(permission):
            raise PermissionDenied
        if request.method == "POST" and form.is_valid():
            try:
                message = run(form.cleaned_data)
            except refusals as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, message)
                return HttpResponseRedirect(back_to)
        return render(request, "admin/payment/action_form.html", {
            **self.admin_site.each_context(request), "title": title, "payment": payment, "form": form,
            "opts": self.model._meta, "submit": submit})


@admin.register(Payment)
class PaymentAdmin(ActionFormMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("reference", "gateway", "amount_display", "status", "review_reason", "mode", "customer_email",
                    "created_at")
    list_filter = ("gateway", "status", "mode", "review_reason", "created_at")
    search_fields = ("reference", "customer_email", "gateway_transaction_id")
    date_hierarchy = "created_at"
    readonly_fields = ("reference", "gateway", "amount_display", "amount", "currency", "status", "review_reason",
                       "mode", "customer_email", "user", "gateway_transaction_id", "amount_paid",
                       "amount_refunded", "metadata", "checkout_url", "paid_at", "last_verified_at", "created_at",
                       "updated_at", "actions_links", "event_trail")
    fields = readonly_fields
    inlines = (TransitionInline, RefundInline, NotificationInline)
    actions = ("verify_now",)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Staff may open the page (to read it and use the actions); every field stays read-only.
        return bool(request.user.is_staff)

    @admin.display(description="Amount expected")
    def amount_display(self, obj: Payment) -> str:
        return obj.amount_display

    @admin.display(description="Actions")
    def actions_links(self, obj: Payment) -> str:
        refund = reverse("admin:payment_payment_refund", args=[obj.pk])
        links = [format_html('<a class="button" href="{}">Request a refund</a>', refund)]
        if obj.status == PaymentStatus.REVIEW:
            resolve = reverse("admin:payment_payment_resolve", args=[obj.pk])
            links.append(format_html('<a class="button" href="{}">Resolve the review</a>', resolve))
        return mark_safe(" ".join(links))  # noqa: S308  (each link built by format_html)

    @admin.display(description="Webhook events")
    def event_trail(self, obj: Payment) -> str:
        # By reference, not by FK: an event is linked to its payment only once processed, and the trail must
        # also show the unmatched, failed and dead ones.
        rows = [
            format_html('<tr><td><a href="{}">#{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
                        reverse("admin:payment_webhookevent_change", args=[e.pk]), e.pk, e.received_at, e.event,
                        e.status, e.attempts, e.last_error[:120])
            for e in WebhookEvent.objects.filter(reference=obj.reference, gateway=obj.gateway).order_by("received_at")
        ]
        if not rows:
            return "none"
        header = "<tr><th>id</th><th>received</th><th>event</th><th>status</th><th>attempts</th><th>error</th></tr>"
        # Each row was built by format_html (escaped); joining them keeps them safe.
        return format_html("<table>{}{}</table>", mark_safe(header), mark_safe("".join(rows)))  # noqa: S308

    def get_urls(self) -> list[Any]:
        custom = [
            path("<int:pk>/refund/", self.admin_site.admin_view(self.refund_view), name="payment_payment_refund"),
            path("<int:pk>/resolve/", self.admin_site.admin_view(self.resolve_view), name="payment_payment_resolve"),
        ]
        return custom + super().get_urls()

    @admin.action(description="Verify now with the gateway")
    def verify_now(self, request: HttpRequest, queryset: QuerySet[Payment]) -> None:
        for payment in queryset:
            try:
                status = services.payment_verify(payment.pk, source="staff", allow_unpaid_final=False)
                self.message_user(request, f"{payment.reference}: {status}")
            except GatewayError as exc:
                self.message_user(request, f"{payment.reference}: gateway error: {exc}", messages.ERROR)

    def refund_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = get_object_or_404(Payment, pk=pk)
        actor = request.user.get_username()

        def run(data: dict[str, Any]) -> str:
            refund = services.refund_request(payment.pk, amount=data["refund_amount"], reason=data["reason"],
                                             idempotency_key=data["token"], requested_by=actor)
            return f"Refund #{refund.pk} of {refund.amount} {refund.currency} minor units: {refund.status}."

        return self.action_page(
            request, permission="payment.refund_payment",
            form=RefundForm(request.POST or None, payment=payment, user_id=request.user.pk), run=run,
            refusals=(services.RefundNotAllowedError,), back_to=reverse("admin:payment_payment_change", args=[pk]),
            title=f"Refund {payment.reference}", payment=payment, submit="Request refund")

    def resolve_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        payment = get_object_or_404(Payment, pk=pk)
        actor = request.user.get_username()

        def run(data: dict[str, Any]) -> str:
            services.payment_review_resolve(payment.pk, to_status=data["outcome"], note=data["note"], actor=actor)
            return f"{payment.reference} resolved."

        return self.action_page(
            request, permission="payment.resolve_review", form=ResolveReviewForm(request.POST or None), run=run,
            refusals=(ValueError,), back_to=reverse("admin:payment_payment_change", args=[pk]),
            title=f"Resolve review of {payment.reference}", payment=payment, submit="Resolve")


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "gateway", "event", "reference", "status", "attempts", "dispatched_via", "received_at")
    list_filter = ("gateway", "event", "status", "received_at")
    search_fields = ("reference", "gateway_transaction_id", "dedupe_key")
    date_hierarchy = "received_at"
    fields = ("gateway", "event", "kind", "reference", "gateway_transaction_id", "mode", "status", "attempts",
              "dispatched_via", "last_error", "next_attempt_at", "payment", "received_at", "processed_at",
              "pruned_at", "source_ip", "dedupe_key", "pretty_headers", "pretty_body")
    readonly_fields = fields
    actions = ("reprocess", "reverify")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)

    @admin.display(description="Headers (secrets redacted)")
    def pretty_headers(self, obj: WebhookEvent) -> str:
        headers = {k: ("[redacted]" if any(h in k.lower() for h in _SECRET_HEADER_HINTS) else v)
                   for k, v in (obj.headers or {}).items()}
        return format_html("<pre>{}</pre>", json.dumps(headers, indent=2, sort_keys=True))

    @admin.display(description="Body")
    def pretty_body(self, obj: WebhookEvent) -> str:
        raw = bytes(obj.body or b"")
        if not raw:
            return "(pruned)" if obj.pruned_at else "(empty)"
        try:
            text = json.dumps(redact_card_data(json.loads(raw)), indent=2, sort_keys=True)
        except ValueError:
            text = "(not JSON; not shown)"
        return format_html("<pre>{}</pre>", text)

    @admin.action(description="Reprocess (through the queue; the state machine still holds)")
    def reprocess(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        count = 0
        for event in queryset.exclude(status=EventStatus.IGNORED):
            count += services.event_replay(event.pk, force=True) == "replayed"
        self.message_user(request, f"{count} event(s) queued for reprocessing.")

    @admin.action(description="Re-verify the payment with the gateway")
    def reverify(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        for event in queryset.select_related("payment"):
            payment = event.payment or Payment.objects.filter(reference=event.reference).first()
            if payment is None:
                self.message_user(request, f"event #{event.pk}: no payment yet", messages.WARNING)
                continue
            try:
                status = services.payment_verify(payment.pk, source="staff", allow_unpaid_final=False)
                self.message_user(request, f"{payment.reference}: {status}")
            except GatewayError as exc:
                self.message_user(request, f"{payment.reference}: gateway error: {exc}", messages.ERROR)


@admin.register(Refund)
class RefundAdmin(ActionFormMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "payment", "amount", "currency", "status", "gateway_refund_id", "requested_by",
                    "created_at")
    list_filter = ("status", "currency", "created_at")
    search_fields = ("payment__reference", "gateway_refund_id", "gateway_refund_reference", "idempotency_key")
    readonly_fields = ("payment", "amount", "currency", "status", "gateway_refund_id", "gateway_refund_reference",
                       "reason", "requested_by", "attempts", "submitted_at", "last_error", "created_at",
                       "updated_at", "completed_at", "settle_link")
    fields = readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return bool(request.user.is_staff)

    @admin.display(description="Settle")
    def settle_link(self, obj: Refund) -> str:
        if obj.status not in (RefundStatus.UNKNOWN, RefundStatus.PROCESSING):
            return "-"
        return format_html('<a class="button" href="{}">Settle after checking the gateway</a>',
                           reverse("admin:payment_refund_settle", args=[obj.pk]))

    def get_urls(self) -> list[Any]:
        return [path("<int:pk>/settle/", self.admin_site.admin_view(self.settle_view), name="payment_refund_settle"),
                *super().get_urls()]

    def settle_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        refund = get_object_or_404(Refund.objects.select_related("payment"), pk=pk)
        actor = request.user.get_username()

        def run(data: dict[str, Any]) -> str:
            services.refund_settle(refund.pk, to_status=data["outcome"], note=data["note"], actor=actor)
            return f"Refund #{refund.pk} settled."

        return self.action_page(
            request, permission="payment.refund_payment", form=RefundSettleForm(request.POST or None), run=run,
            refusals=(ValueError,), back_to=reverse("admin:payment_refund_change", args=[pk]),
            title=f"Settle {refund}", payment=refund.payment, submit="Settle")


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "kind", "recipient", "payment", "event", "delivered_at", "created_at")
    list_filter = ("kind", "recipient", "created_at")
    search_fields = ("payment__reference", "message")


@admin.register(PaymentTransition)
class PaymentTransitionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "payment", "from_status", "to_status", "source", "actor", "created_at")
    list_filter = ("to_status", "source", "created_at")
    search_fields = ("payment__reference",)
