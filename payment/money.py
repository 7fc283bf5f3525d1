"""Money at the gateway edge: integer minor units + ISO currency, converted through Decimal, never float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

# ISO 4217 exponents that differ from 2, for currencies the African gateways settle.
_EXPONENTS = {"UGX": 0, "RWF": 0, "XOF": 0, "XAF": 0, "GNF": 0, "KMF": 0, "JPY": 0, "BIF": 0, "DJF": 0}


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in minor units."""


def currency_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def major_to_minor(value: object, currency: str) -> int:
    """Convert a major-unit amount (int, Decimal or numeric string) to exact minor units."""
    if isinstance(value, bool | float):
        # JSON is parsed with parse_float=Decimal; a float here means someone lost precision already.
        raise MoneyError("float amounts are not accepted")
    try:
        amount = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except (InvalidOperation, ValueError) as exc:
        raise MoneyError(f"not a number: {value!r}") from exc
    if not amount.is_finite():
        raise MoneyError("amount is not finite")
    minor = amount.scaleb(currency_exponent(currency))
    if minor != minor.to_integral_value():
        raise MoneyError(f"{value} {currency} has more decimals than the currency allows")
    return int(minor)


def minor_to_major(value: int, currency: str) -> Decimal:
    return Decimal(value).scaleb(-currency_exponent(currency))


def parse_minor(value: object) -> int:
    """Minor units given as an int or an integer string (Paystack refund amounts arrive as "5000")."""
    if isinstance(value, bool):
        raise MoneyError("boolean is not an amount")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise MoneyError(f"not an integer amount in minor units: {value!r}")
