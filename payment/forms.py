"""Forms for every customer-facing input: the demo checkout and the query of the gateway's redirect back."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.core.validators import RegexValidator
from django.http import QueryDict

from .gateways.base import Gateway
from .gateways.registry import gateway_names

# Bounds of the demo form, in minor units: 1.00 up to 100,000,000.00 of the currency. Far inside the
# 18-digit ceiling of payment/money.py and the bigint column; nobody demos a bigger payment.
AMOUNT_MIN = 100
AMOUNT_MAX = 10_000_000_000

# Printable ASCII without spaces: what a reference is (Payment.reference, max 100) and what a gateway's
# redirect carries. NUL, control characters and other scripts never reach a database lookup.
_printable = RegexValidator(r"\A[\x21-\x7e]+\Z", "only printable ASCII characters without spaces")
# Gateways read at most 100 characters of a query value (and cut the rest silently); any value longer
# than that, or an outsized query, is not a gateway's redirect.
QUERY_VALUE_MAX = 100
QUERY_PARAMS_MAX = 20


class CheckoutForm(forms.Form):
    """The demo "start a payment" form (only served with PAYSHIFT_DEMO_PAGES)."""

    gateway = forms.ChoiceField(choices=())
    amount = forms.IntegerField(min_value=AMOUNT_MIN, max_value=AMOUNT_MAX, initial=500000)
    currency = forms.CharField(min_length=3, max_length=3, initial="NGN",
                               validators=[RegexValidator(r"\A[A-Za-z]{3}\Z", "three letters, e.g. NGN")])
    email = forms.EmailField(max_length=254, initial="ada@example.com")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The registry is read per form: enabled gateways are a setting, not an import-time constant.
        cast(forms.ChoiceField, self.fields["gateway"]).choices = [(name, name) for name in gateway_names()]

    def clean_currency(self) -> str:
        return str(self.cleaned_data["currency"]).upper()


class CallbackQueryForm(forms.Form):
    """The query a gateway appends to our callback URL, reduced to what we look up."""

    reference = forms.CharField(max_length=100, validators=[_printable])
    transaction_id = forms.CharField(max_length=64, required=False, validators=[_printable])

    def __init__(self, query: QueryDict, *, gateway: Gateway) -> None:
        self.query = query
        # Each gateway knows its own keys (Paystack `reference`/`trxref`, Flutterwave `tx_ref`, ...).
        reference, transaction_id = gateway.callback_reference(query)
        super().__init__(data={"reference": reference, "transaction_id": transaction_id})

    def clean(self) -> dict[str, Any]:
        values = [text for key, items in self.query.lists() for text in (key, *items)]
        if len(values) > QUERY_PARAMS_MAX or any(len(v) > QUERY_VALUE_MAX for v in values):
            raise forms.ValidationError("the callback query is longer than any gateway sends")
        return super().clean() or {}
