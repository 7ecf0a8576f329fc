"""Units: bring a value into its method's units before any limit is compared, and back for OBX-7.

CLINICAL.md §1.3 and item 4: labmw judges ALT in U/L; a result reported in µkat/L is converted
with the method's configured factor (1 µkat/L = 60 U/L, i.e. 1 U/L = 0.01667 µkat/L) before the
measuring range, reference range, critical limits and deltas are checked. The instrument's value
and units still travel unchanged (PRODUCT.md guarantee 3); only the applied range shown in OBX-7
is written back in the result's own units, so the LIS never sees U/L limits beside a µkat/L value.
Units with no configured conversion are not checked at all, and the evaluation says so.

The factor is configuration (``[[methods.NAME.conversions]]``), never a constant here.
Pure: stdlib and ``labmw.model`` / ``labmw.errors`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from labmw.errors import RuleError
from labmw.model import Method, UnitConversion

# "µ" (U+00B5 MICRO SIGN) and "μ" (U+03BC GREEK SMALL LETTER MU) are both in use for micro, and
# ASCII-only analyzers write "u": all three name the same unit.
_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})


def unit_key(units: str) -> str:
    """A comparable form of a unit text: blanks stripped, case folded, micro signs as ``u``."""
    return units.strip().translate(_MICRO).casefold()


@dataclass(frozen=True, slots=True, kw_only=True)
class Converted:
    """A value in the method's units and the conversion that produced it (``None``: none needed)."""

    value: Decimal
    conversion: UnitConversion | None


def find_conversion(units: str, method: Method) -> UnitConversion | None:
    """The method's conversion from ``units``, or ``None`` when it has none for them."""
    key = unit_key(units)
    return next((c for c in method.conversions if unit_key(c.units) == key), None)


def to_method_units(value: Decimal, units: str, method: Method) -> Converted | None:
    """``value`` reported in ``units`` expressed in the method's units.

    Inputs: the numeric value; its units as reported (``""`` means the method's own units, as
    PRODUCT.md says for an empty R-5); the method. Output: a :class:`Converted`, or ``None`` when
    the units are neither the method's nor one it has a conversion for (then nothing may be
    compared). Raises: :class:`~labmw.errors.RuleError` for a conversion whose factor is not
    positive (bad configuration).
    """
    if not units.strip() or unit_key(units) == unit_key(method.units):
        return Converted(value=value, conversion=None)
    conversion = find_conversion(units, method)
    if conversion is None:
        return None
    validate_conversion(conversion)
    return Converted(value=value * conversion.factor, conversion=conversion)


def from_method_units(value: Decimal, conversion: UnitConversion) -> Decimal:
    """A limit in the method's units shown in the conversion's units, to its ``decimals`` places.

    Rounds half up (41 U/L / 60 = 0.683 -> 0.68 µkat/L, as CLINICAL.md §1.3 writes it).
    Raises: :class:`~labmw.errors.RuleError` for a bad conversion.
    """
    validate_conversion(conversion)
    return (value / conversion.factor).quantize(
        Decimal(1).scaleb(-conversion.decimals), rounding=ROUND_HALF_UP
    )


def validate_conversion(conversion: UnitConversion) -> None:
    """Raise :class:`~labmw.errors.RuleError` unless the factor is a positive finite number and
    ``decimals`` is between 0 and 6."""
    if not conversion.factor.is_finite() or conversion.factor <= 0:
        raise RuleError(
            f"conversion from {conversion.units}: factor {conversion.factor} is not valid: "
            "expected a positive number"
        )
    if not 0 <= conversion.decimals <= 6:
        raise RuleError(
            f"conversion from {conversion.units}: decimals {conversion.decimals} is not valid: "
            "expected a whole number from 0 to 6"
        )
