"""Tests for labmw.rules.units: conversion into the method's units and back for OBX-7."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labmw.errors import RuleError
from labmw.model import Method, UnitConversion
from labmw.rules.units import from_method_units, to_method_units, unit_key

UKAT = UnitConversion(units="ukat/L", factor=Decimal(60), decimals=2)
METHOD = Method(name="ALT-T", analyte="ALT", units="U/L", conversions=(UKAT,))


@pytest.mark.parametrize("units", ["ukat/L", "µkat/L", "μkat/L", " UKAT/l "])
def test_every_spelling_of_micro_converts(units: str) -> None:
    """ukat/L, the micro sign, the Greek mu and any case all name the same unit."""
    converted = to_method_units(Decimal("1.02"), units, METHOD)
    assert converted is not None and converted.value == Decimal("61.20")
    assert converted.conversion is UKAT


@pytest.mark.parametrize("units", ["", "U/L", "u/l", " U/L "])
def test_method_units_and_empty_units_need_no_conversion(units: str) -> None:
    """Empty units mean the method's own, which are compared without case."""
    converted = to_method_units(Decimal(61), units, METHOD)
    assert converted is not None and converted.value == 61 and converted.conversion is None


def test_unknown_units_cannot_be_converted() -> None:
    """A unit with no configured conversion gives None: nothing may be compared."""
    assert to_method_units(Decimal(61), "mmol/L", METHOD) is None


@pytest.mark.parametrize(
    ("limit", "shown"),
    [(Decimal(9), "0.15"), (Decimal(59), "0.98"), (Decimal(41), "0.68"), (Decimal(8), "0.13")],
)
def test_limits_come_back_rounded_half_up(limit: Decimal, shown: str) -> None:
    """U/L limits shown in ukat/L to 2 places, as CLINICAL.md 1.3 writes 41 U/L = 0.68 ukat/L."""
    assert str(from_method_units(limit, UKAT)) == shown


@pytest.mark.parametrize(
    "bad",
    [UnitConversion(units="x", factor=Decimal(0)), UnitConversion(units="x", factor=Decimal(-60)),
     UnitConversion(units="x", factor=Decimal(60), decimals=9)],
)
def test_bad_conversions_raise_rule_error(bad: UnitConversion) -> None:
    """A non-positive factor or absurd decimals is a configuration error, not a silent result."""
    method = Method(name="M", analyte="A", units="U/L", conversions=(bad,))
    with pytest.raises(RuleError, match="not valid"):
        to_method_units(Decimal(1), "x", method)


def test_unit_key_folds_case_blanks_and_micro() -> None:
    """The comparison key ignores case, surrounding blanks and the micro-sign variant."""
    assert unit_key(" µKat/L ") == unit_key("ukat/l") == "ukat/l"


@given(value=st.decimals(min_value=0, max_value=100, places=2))
def test_round_trip_is_within_half_a_display_step(value: Decimal) -> None:
    """Converting ukat/L to U/L and back to 2 places returns the value within 0.005."""
    converted = to_method_units(value, "ukat/L", METHOD)
    assert converted is not None
    assert abs(from_method_units(converted.value, UKAT) - value) <= Decimal("0.005")
