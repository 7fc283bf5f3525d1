"""Money at the gateway edge: integer minor units inside, Decimal major units for Flutterwave, exact JSON."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring
from typing import Any

# ISO 4217 minor-unit exponents that differ from the usual 2. Only Flutterwave
# speaks major units, so only its currencies matter; unknown codes default to 2.
_EXPONENTS: dict[str, int] = {
    "BIF": 0,
    "CLP": 0,
    "DJF": 0,
    "GNF": 0,
    "JPY": 0,
    "KMF": 0,
    "KRW": 0,
    "PYG": 0,
    "RWF": 0,
    "UGX": 0,
    "VND": 0,
    "VUV": 0,
    "XAF": 0,
    "XOF": 0,
    "XPF": 0,
    "BHD": 3,
    "IQD": 3,
    "JOD": 3,
    "KWD": 3,
    "LYD": 3,
    "OMR": 3,
    "TND": 3,
}


class AmountError(ValueError):
    """An amount that is not a positive, exactly representable quantity of the currency."""


def exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def minor_to_major(minor: int, currency: str) -> Decimal:
    return Decimal(minor).scaleb(-exponent(currency))


def major_to_minor(major: Decimal | int | str, currency: str) -> int:
    """Exact conversion; fractions finer than the currency allows are an error, never rounded."""
    if isinstance(major, bool):
        raise AmountError("amount must be a number")
    try:
        value = Decimal(str(major)) if not isinstance(major, Decimal) else major
    except InvalidOperation:
        raise AmountError("amount must be a number") from None
    if not value.is_finite():
        raise AmountError("amount must be a number")
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise AmountError(f"{currency} allows at most {exponent(currency)} decimal places")
    return int(minor)


def format_major(minor: int, currency: str) -> str:
    """Human display for the checkout page, e.g. 150050 NGN -> "1,500.50"."""
    places = exponent(currency)
    return f"{minor_to_major(minor, currency):,.{places}f}"


def parse_minor(raw: Any) -> int:
    """A minor-unit amount as Paystack accepts it: an int or a string of digits (no floats)."""
    if isinstance(raw, bool):
        raise AmountError("amount must be an integer in minor units")
    if isinstance(raw, int):
        return raw
    # ASCII only: "²".isdigit() is True but int("²") raises.
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit() and len(raw.strip()) <= 18:
        return int(raw.strip())
    raise AmountError("amount must be an integer in minor units")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON with Decimal written as an exact JSON number (1500.5, never 1500.4999...).

    The stdlib encoder cannot emit a Decimal as a number without going through
    float, so this small encoder walks the tree itself.
    """
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode("utf-8")


_CONSTANTS = {None: "null", True: "true", False: "false"}


def _encode(value: Any, out: list[str]) -> None:
    # Hot path (every verify answer): the C string escaper, no per-value json.dumps calls.
    if isinstance(value, str):
        out.append(encode_basestring(value))
    elif value is None or isinstance(value, bool):
        out.append(_CONSTANTS[value])
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(encode_basestring(str(key)))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, Decimal):
        out.append(_decimal_text(value))
    elif isinstance(value, float):
        raise TypeError("floats are not allowed in sandbox payloads; use Decimal")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def _decimal_text(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")
