"""The method part of labmw.config: new tables parse into the model; mistakes name file, key and expectation."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from labmw.config import parse
from labmw.errors import ConfigError

PATH = Path("/etc/labmw/lab.toml")

FULL = """
[methods.M]
analyte = "ALT"
units = "U/L"

[[methods.M.ranges]]
sex = "M"
age_min = "18y"
low = 9
high = 59
status = "pending review"

[[methods.M.conversions]]
units = "ukat/L"
factor = 60

[[methods.M.thresholds]]
name = "ACG 2017"
sex = "M"
value = 33

[methods.M.grading]
scheme = "CTCAE v5.0"
above_uln = [1, 3, 5, 20]

[methods.M.alt_delta]
window_days = 7

[methods.M.alt_delta.significant_change]
ratio_up = 1.45
ratio_down = 0.69
min_change = 20
min_change_uln = 0.5

[methods.M.alt_delta.implausible_fall]
previous_above_uln = 3
half_life_hours = 47
fraction_of_expected = 0.5

[methods.M.alt_delta.abrupt_rise]
ratio = 5
min_rise = 300
within_hours = 48
enabled = false

[methods.M.hys_law]
aminotransferase_uln = 3
bilirubin_uln = 2
alp_uln = 2
window_hours = 24
bilirubin = ["BILT"]
"""


def load(text: str):  # noqa: ANN201
    """Parse ``text`` as the configuration file at PATH."""
    return parse(tomllib.loads(text), PATH)


def test_every_new_table_reaches_the_model() -> None:
    """Range status, conversions, thresholds, grading, tiers and Hy's law are all read."""
    method = load(FULL).methods["M"]
    assert method.ranges[0].status == "pending review"
    assert method.conversions[0].factor == 60 and method.conversions[0].decimals == 2
    assert method.thresholds[0].value == 33 and method.thresholds[0].enabled is False
    assert method.grading is not None and method.grading.above_uln == tuple(Decimal(b) for b in (1, 3, 5, 20))
    tiers = method.alt_delta
    assert tiers is not None and tiers.window_days == 7 and tiers.skip_when_both_within_uln
    assert tiers.significant_change is not None and tiers.significant_change.ratio_up == Decimal("1.45")
    assert tiers.abrupt_rise is not None and tiers.abrupt_rise.enabled is False
    assert method.hys_law is not None and method.hys_law.bilirubin == ("BILT",)
    assert method.hys_law.aminotransferases == ("ALT", "AST")
    assert method.delta_window_days == 7


def test_delta_window_is_the_widest_of_both_delta_rules() -> None:
    """With a simple delta of 10 days and tiers of 7, the store must look back 10 days."""
    text = FULL + "\n[methods.M.delta]\nabs = 20\nwindow_days = 10\n"
    assert load(text).methods["M"].delta_window_days == 10
    assert load('[methods.N]\nanalyte = "A"\nunits = "U/L"\n').methods["N"].delta_window_days is None


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        ('status = "pending review"', 'status = "maybe"', "methods.M.ranges[0].status", "expected one of"),
        ("high = 59", "high = 59\nhihg = 60", "methods.M.ranges[0].hihg", "unknown key"),
        ("factor = 60", "factor = 0", "methods.M.conversions[0].factor", "above 0"),
        ("value = 33", 'value = 33\nsex_ = "X"', "methods.M.thresholds[0].sex_", "unknown key"),
        ("above_uln = [1, 3, 5, 20]", "above_uln = [1, 5, 3]", "methods.M.grading.above_uln", "increasing"),
        ("above_uln = [1, 3, 5, 20]", "above_uln = [1, 0]", "methods.M.grading.above_uln[1]", "above 0"),
        ("ratio_down = 0.69", "ratio_down = 1.1", "methods.M.alt_delta.significant_change", "below 1"),
        ("half_life_hours = 47\n", "", "methods.M.alt_delta.implausible_fall.half_life_hours",
         "required, expected a number (with its source as a comment)"),
        ("fraction_of_expected = 0.5", "fraction_of_expected = 2",
         "methods.M.alt_delta.implausible_fall.fraction_of_expected", "at most 1"),
        ("ratio = 5", "ratio = 1", "methods.M.alt_delta.abrupt_rise.ratio", "above 1"),
        ("window_days = 7", "window_days = 7\nfast = true", "methods.M.alt_delta.fast", "unknown key"),
        ('bilirubin = ["BILT"]', "bilirubin = []", "methods.M.hys_law.bilirubin", "non-empty list"),
        ("window_hours = 24", "window_hours = -1", "methods.M.hys_law.window_hours", "above 0"),
    ],
)
def test_mistakes_name_file_key_and_expectation(old: str, new: str, key: str, expected: str) -> None:
    """Each mistake raises ConfigError with the file, the dotted key and what was expected."""
    assert old in FULL
    with pytest.raises(ConfigError) as caught:
        load(FULL.replace(old, new, 1))
    assert caught.value.key == key
    assert expected in caught.value.problem
    assert str(PATH) in str(caught.value)


def test_thresholds_must_be_an_array_of_tables() -> None:
    """``thresholds = 3`` is refused naming the key and the expected [[...]] form."""
    with pytest.raises(ConfigError) as caught:
        load('[methods.N]\nanalyte = "A"\nunits = "U/L"\nthresholds = 3\n')
    assert caught.value.key == "methods.N.thresholds" and "array of tables" in caught.value.problem
