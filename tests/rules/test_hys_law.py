"""Tests for labmw.rules.hys_law: the Hy's-law candidate note over the patient's related results."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest

from labmw.errors import RuleError
from labmw.model import HysLawRule, RelatedResult
from labmw.rules.hys_law import check_hys_law

# FDA DILI guidance 2009 as CLINICAL.md 2.3 and item 7 quote it.
RULE = HysLawRule(
    aminotransferase_uln=Decimal(3), bilirubin_uln=Decimal(2), alp_uln=Decimal(2), window_hours=Decimal(24)
)
NOW = datetime(2026, 11, 22, 8, 0)


def other(analyte: str, value: str, uln: str, hours: float = 2) -> RelatedResult:
    """A related result ``hours`` before NOW (negative: after)."""
    return RelatedResult(analyte=analyte, value=Decimal(value), uln=Decimal(uln),
                         collected_at=NOW - timedelta(hours=hours))


def check(value: str, *related: RelatedResult, analyte: str = "ALT", uln: str | None = "59"):  # noqa: ANN201
    """Judge an ALT ``value`` with the given related results."""
    return check_hys_law(RULE, analyte=analyte, value=Decimal(value), uln=None if uln is None else Decimal(uln),
                         collected_at=NOW, related=related)


TBIL_HIGH = other("TBIL", "45", "21")  # 2.14 x ULN
ALP_OK = other("ALP", "100", "130")


@pytest.mark.parametrize(
    ("value", "related", "candidate", "reason"),
    [
        ("177", (TBIL_HIGH, ALP_OK), True, ""),  # exactly 3 x ULN counts (>=)
        ("176", (TBIL_HIGH, ALP_OK), False, "no aminotransferase >= 3 x ULN within 24 h"),
        ("200", (other("TBIL", "42", "21"), ALP_OK), False, "no bilirubin > 2 x ULN within 24 h"),  # = 2x
        ("200", (TBIL_HIGH,), False, "no ALP result within 24 h"),
        ("200", (TBIL_HIGH, other("ALP", "261", "130")), False, "ALP > 2 x ULN within 24 h (cholestatic pattern)"),
        ("200", (TBIL_HIGH, ALP_OK, other("ALP", "300", "130", hours=5)), False,
         "ALP > 2 x ULN within 24 h (cholestatic pattern)"),
        ("200", (other("TBIL", "45", "21", hours=25), ALP_OK), False, "no bilirubin > 2 x ULN within 24 h"),
        ("200", (other("TBIL", "45", "21", hours=-23), ALP_OK), True, ""),  # later results count too
        ("100", (other("AST", "150", "40"), TBIL_HIGH, ALP_OK), True, ""),  # via AST
    ],
)
def test_criteria(value: str, related: tuple[RelatedResult, ...], candidate: bool, reason: str) -> None:
    """ALT/AST >= 3 x ULN, TBIL > 2 x ULN, every ALP <= 2 x ULN, all within 24 h."""
    outcome = check(value, *related)
    assert outcome.candidate is candidate
    assert outcome.reason == reason


def test_note_names_every_criterion_and_says_it_is_not_a_diagnosis() -> None:
    """The note lists the values as multiples of their ULN and disclaims a diagnosis."""
    outcome = check("200", TBIL_HIGH, ALP_OK)
    assert outcome.note == (
        "Hy's-law candidate (FDA DILI guidance 2009): ALT 200 = 3.4 x ULN 59, TBIL 45 = 2.1 x ULN 21, "
        "ALP 100 = 0.8 x ULN 130 within 24 h; laboratory criteria only, not a diagnosis"
    )


def test_current_result_without_a_uln_can_still_be_completed_by_an_ast() -> None:
    """No range applied to this ALT: only a related AST can meet the aminotransferase criterion."""
    assert not check("900", TBIL_HIGH, ALP_OK, uln=None).candidate
    assert check("900", other("AST", "150", "40"), TBIL_HIGH, ALP_OK, uln=None).candidate


def test_analyte_names_are_configuration() -> None:
    """A lab calling bilirubin BILT lists that name; case and blanks do not matter."""
    rule = HysLawRule(aminotransferase_uln=Decimal(3), bilirubin_uln=Decimal(2), alp_uln=Decimal(2),
                      window_hours=Decimal(24), bilirubin=("BILT",))
    outcome = check_hys_law(rule, analyte="alt", value=Decimal(200), uln=Decimal(59), collected_at=NOW,
                            related=(other(" bilt ", "45", "21"), ALP_OK))
    assert outcome.candidate


def test_bad_rule_raises_rule_error() -> None:
    """A zero multiple or an empty analyte list is a configuration error."""
    with pytest.raises(RuleError, match="window_hours"):
        check_hys_law(HysLawRule(aminotransferase_uln=Decimal(3), bilirubin_uln=Decimal(2), alp_uln=Decimal(2),
                                 window_hours=Decimal(0)), analyte="ALT", value=Decimal(1), uln=Decimal(1),
                      collected_at=NOW, related=())
    with pytest.raises(RuleError, match="bilirubin"):
        check_hys_law(HysLawRule(aminotransferase_uln=Decimal(3), bilirubin_uln=Decimal(2), alp_uln=Decimal(2),
                                 window_hours=Decimal(24), bilirubin=()), analyte="ALT", value=Decimal(1),
                      uln=Decimal(1), collected_at=NOW, related=())
