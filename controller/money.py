"""Exact decimal amounts as scaled integers.

Prices, values and percentages travel as decimal strings and are held as integers in
millionths (``MICRO``): a price of "101.25" is 101_250_000 micro-units, a percent of "12.5" is
12_500_000 micro-percent. Every amount the system stores or reports is exact.
"""

from __future__ import annotations

import re

MICRO = 1_000_000
DECIMAL_PLACES = 6

# ASCII digits only: "\d" would also take fullwidth or Arabic-Indic digits, which int() reads.
_DECIMAL = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,6}))?")


class InvalidDecimal(ValueError):
    """The text is not a plain non-negative decimal with at most 6 decimal places."""


def parse_micro(text: str) -> int:
    """Parse a plain decimal such as "101.25" into micro-units (101_250_000).

    Accepts digits with an optional fraction of at most 6 places: no sign, exponent, spaces or
    separators, so that every accepted string has exactly one meaning.
    """
    match = _DECIMAL.fullmatch(text)
    if match is None:
        raise InvalidDecimal(text)
    whole, fraction = match.group(1), match.group(2) or ""
    return int(whole) * MICRO + int(fraction.ljust(DECIMAL_PLACES, "0"))


def format_micro(amount: int) -> str:
    """Format micro-units as the shortest exact decimal string ("101.25", "-3", "0.000001")."""
    if amount < 0:
        return "-" + format_micro(-amount)
    # String slicing rather than divmod: reports format millions of amounts.
    digits = str(amount)
    if len(digits) <= DECIMAL_PLACES:
        fraction = digits.rjust(DECIMAL_PLACES, "0").rstrip("0")
        return "0." + fraction if fraction else "0"
    whole, fraction = digits[:-DECIMAL_PLACES], digits[-DECIMAL_PLACES:].rstrip("0")
    return whole + "." + fraction if fraction else whole


def divide_half_even(numerator: int, denominator: int) -> int:
    """Round numerator / denominator to the nearest integer, ties to even (banker's rounding)."""
    if denominator < 0:
        numerator, denominator = -numerator, -denominator
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        quotient += 1
    return quotient
