"""Tests for labmw.rules.scenario: made-up results for `rules test` and the cases of `rules check`."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from labmw.errors import RuleError
from labmw.model import Method, RangeRule
from labmw.rules.age import age_in, parse_age
from labmw.rules.scenario import (
    Scenario,
    birth_date_for,
    describe,
    parse_previous,
    parse_related,
    parse_value,
    parse_when,
    run_scenario,
)

AT = datetime(2026, 3, 1, 8, 0)
METHOD = Method(name="ALT-T", analyte="ALT", units="U/L",
                ranges=(RangeRule(low=Decimal(9), high=Decimal(59), sex="M", age_min=parse_age("18y")),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("61", (None, Decimal(61))), ("<5", ("<", Decimal(5))), (">700", (">", Decimal(700))),
     ("<=5", ("<=", Decimal(5))), ("-----", (None, None)), ("NA", (None, None)), ("", (None, None))],
)
def test_parse_value_like_the_astm_mapping(text: str, expected: tuple[str | None, Decimal | None]) -> None:
    """Comparator plus number, or nothing numeric at all."""
    assert parse_value(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("72h", datetime(2026, 2, 26, 8, 0)), ("3d", datetime(2026, 2, 26, 8, 0)),
     ("1.5h", datetime(2026, 3, 1, 6, 30)), ("2026-02-20T07:00", datetime(2026, 2, 20, 7, 0))],
)
def test_parse_when(text: str, expected: datetime) -> None:
    """Hours or days before the result, or an ISO date-time."""
    assert parse_when(text, AT) == expected


def test_parse_previous_and_related() -> None:
    """VALUE[ UNITS]@TIME and ANALYTE=VALUE/ULN[@TIME]."""
    previous = parse_previous("0.80 ukat/L@3d", AT)
    assert (previous.value, previous.units, previous.collected_at) == (
        Decimal("0.80"), "ukat/L", datetime(2026, 2, 26, 8, 0))
    related = parse_related("TBIL=45/21@2h", AT)
    assert (related.analyte, related.value, related.uln) == ("TBIL", Decimal(45), Decimal(21))
    assert parse_related("ALP=100/130", AT).collected_at == AT


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda: parse_when("yesterday", AT), "72h, 3d"),
     (lambda: parse_previous("48", AT), "VALUE@TIME"),
     (lambda: parse_previous("high@3d", AT), "VALUE@TIME"),
     (lambda: parse_related("TBIL=45", AT), "ANALYTE=VALUE/ULN"),
     (lambda: parse_related("TBIL=45/0", AT), "ULN above 0")],
)
def test_bad_texts_name_the_expected_form(call, message: str) -> None:  # noqa: ANN001
    """Each malformed text raises RuleError saying what is expected."""
    with pytest.raises(RuleError, match=message):
        call()


@pytest.mark.parametrize("age", ["45y", "18y", "6m", "20d", "0d"])
@pytest.mark.parametrize("at", [date(2026, 3, 1), date(2024, 2, 29), date(2025, 12, 31)])
def test_birth_date_for_gives_exactly_that_age(age: str, at: date) -> None:
    """The made-up birth date makes the patient exactly the given completed age on that day."""
    bound = parse_age(age)
    assert age_in(bound.unit, birth_date_for(bound, at), at) == bound.amount


def test_run_scenario_and_describe() -> None:
    """A made-up result runs through the engine; the description shows flags, hold and reasons."""
    evaluation = run_scenario({"ALT-T": METHOD}, Scenario(method="ALT-T", value="61", at=AT, sex="M", age="45y"))
    assert evaluation.flags == ("H",)
    lines = describe(evaluation)
    assert lines[:4] == ["method: ALT-T", "flags: H", "hold: no", "applied range: 9-59"]
    assert any(line.startswith("  reference_range: H (") for line in lines)


def test_unknown_method_lists_the_configured_ones() -> None:
    """An unknown method name is a RuleError naming the configured methods."""
    with pytest.raises(RuleError, match=r"unknown method 'ALT' \(configured: ALT-T\)"):
        run_scenario({"ALT-T": METHOD}, Scenario(method="ALT", value="61", at=AT))
