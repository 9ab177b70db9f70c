"""Exact decimal text <-> micro-units: every amount keeps exactly one meaning."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from controller.money import MICRO, format_micro, parse_micro


@given(st.integers(-(10**24), 10**24))
def test_format_micro_is_the_shortest_exact_decimal(amount: int) -> None:
    text = format_micro(amount)
    assert Decimal(text) == Decimal(amount) / MICRO
    assert "e" not in text.lower() and not text.endswith(".")
    if "." in text:
        assert not text.endswith("0")
        assert len(text.split(".")[1]) <= 6


@given(st.integers(0, 10**24 - 1))  # parse_micro takes up to 18 whole digits
def test_parse_reverses_format(amount: int) -> None:
    assert parse_micro(format_micro(amount)) == amount
