"""Money at the gateway edge: integer minor units + ISO currency, converted through Decimal, never float."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# ISO 4217 exponents that differ from 2, for currencies the African gateways settle.
_EXPONENTS = {"UGX": 0, "RWF": 0, "XOF": 0, "XAF": 0, "GNF": 0, "KMF": 0, "JPY": 0, "BIF": 0, "DJF": 0}


# Amounts have at most 18 digits in minor units: far above any real payment, and inside a BigIntegerField.
MAX_MINOR_DIGITS = 18
_INTEGER = re.compile(r"(-?)([0-9]+)")


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
    return _exact_minor(amount, currency_exponent(currency))


def _exact_minor(amount: Decimal, places: int) -> int:
    """amount x 10**places as an exact int, bounded first.

    Done on the digits, with no decimal context: a context rounds ("100.000000000000000000000000001"
    became 10000) and int(Decimal("1e999999999")) never returns (found by payment/tests/test_fuzz.py:
    one signed 30-byte webhook pinned a web thread for good).
    """
    if not amount.is_finite():
        raise MoneyError("amount is not finite")
    negative, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite, so not "n"/"N"/"F"
    end = len(digits)
    while end > 1 and digits[end - 1] == 0:  # 100.00 is 1E+2: trailing zeros are not decimals
        end -= 1
    exponent += len(digits) - end + places
    digits = digits[:end]
    if digits == (0,):
        return 0
    if exponent < 0:
        raise MoneyError(f"{str(amount)[:40]} has more decimals than the currency allows")
    if end + exponent > MAX_MINOR_DIGITS:
        raise MoneyError(f"amount out of range ({end + exponent} digits in minor units)")
    minor = int("".join(map(str, digits))) * 10**exponent
    return -minor if negative else minor


def minor_to_major(value: int, currency: str) -> Decimal:
    return Decimal(value).scaleb(-currency_exponent(currency))


def parse_minor(value: object) -> int:
    """Minor units given as an int or an integer string (Paystack refund amounts arrive as "5000")."""
    if isinstance(value, bool):
        raise MoneyError("boolean is not an amount")
    if isinstance(value, int):
        if abs(value) >= 10**MAX_MINOR_DIGITS:
            raise MoneyError("amount out of range")
        return value
    if isinstance(value, Decimal):
        return _exact_minor(value, 0)
    # ASCII digits only: str.isdigit() also accepts "²" and full-width digits, and "--5" passed lstrip("-").
    if isinstance(value, str) and (match := _INTEGER.fullmatch(value.strip())):
        sign, digits = match.groups()
        digits = digits.lstrip("0") or "0"
        if len(digits) > MAX_MINOR_DIGITS:
            raise MoneyError("amount out of range")
        return -int(digits) if sign else int(digits)
    raise MoneyError(f"not an integer amount in minor units: {str(value)[:40]!r}")
