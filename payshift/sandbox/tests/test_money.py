"""Minor/major conversion and the exact JSON encoder."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from payshift.sandbox.money import AmountError, dumps, format_major, major_to_minor, minor_to_major, parse_minor


def test_round_trips_per_exponent() -> None:
    assert minor_to_major(150050, "NGN") == Decimal("1500.50")
    assert minor_to_major(5000, "UGX") == Decimal(5000)
    assert minor_to_major(1234, "KWD") == Decimal("1.234")
    assert major_to_minor(Decimal("1500.5"), "NGN") == 150050
    assert major_to_minor("19.99", "USD") == 1999
    assert major_to_minor(5000, "XOF") == 5000


@pytest.mark.parametrize(
    ("value", "currency"), [("10.005", "NGN"), ("10.5", "RWF"), ("nan", "NGN"), (True, "NGN")]
)
def test_too_precise_or_invalid_amounts_are_refused(value: object, currency: str) -> None:
    with pytest.raises(AmountError):
        major_to_minor(value, currency)


def test_parse_minor_accepts_ints_and_digit_strings_only() -> None:
    assert parse_minor(5000) == 5000
    assert parse_minor("5000") == 5000
    for bad in (50.0, "50.5", True, None, "abc"):
        with pytest.raises(AmountError):
            parse_minor(bad)


def test_format_major() -> None:
    assert format_major(150050, "NGN") == "1,500.50"
    assert format_major(25000, "UGX") == "25,000"


def test_dumps_writes_decimals_exactly_and_compactly() -> None:
    raw = dumps({"a": Decimal("1500.50"), "b": Decimal("1000.00"), "c": [1, None, True, "zoë"]})
    assert raw == '{"a":1500.5,"b":1000,"c":[1,null,true,"zoë"]}'.encode()
    assert json.loads(raw)["a"] == 1500.5
    with pytest.raises(TypeError):
        dumps({"amount": 1.5})
