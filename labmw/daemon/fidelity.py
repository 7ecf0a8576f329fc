"""The pipeline's fidelity hooks (issue 13), kept apart so the intake calls one function per step.

* :func:`astm_profile` reads the analyzer's identity settings (test code component, where the
  specimen ID is: any O field and component);
* :func:`method_for` finds the method by the full test identifier first (``--map 'rpoB1^Ct=...'``),
  then by the test code;
* :func:`keep_wire` stores what the instrument sent beyond the mapped columns;
* :func:`record_gates` makes a message's named holds loud: a warning log line and an
  ``alert_raised`` audit event when results came without a test code (a misconfigured analyzer).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

import structlog

from labmw.config import AnalyzerSettings
from labmw.mapping.astm_lis2a import AstmProfile
from labmw.mapping.identity import TEST_CODE_MISSING
from labmw.model import Result
from labmw.store import Tx
from labmw.store.result_wire import wire_json

log = structlog.get_logger(__name__)

_O_FIELD = re.compile(r"O-(\d{1,2})")


def astm_field(specimen_field: str) -> int:
    """The O-record field number of ``specimen_field`` (``"O-4"`` -> 4); 3 for anything else."""
    match = _O_FIELD.fullmatch(specimen_field)
    return int(match.group(1)) if match else 3


def astm_profile(analyzer: AnalyzerSettings) -> AstmProfile:
    return AstmProfile(test_code_component=analyzer.test_code_component,
                       specimen_component=analyzer.specimen_component, encoding=analyzer.encoding,
                       specimen_field=astm_field(analyzer.specimen_field))


def method_for(mapping: Mapping[str, str], result: Result) -> str | None:
    """The configured method of ``result``: by full identifier, else by test code, else None."""
    if result.test_id and result.test_id in mapping:
        return mapping[result.test_id]
    return mapping.get(result.test_code) if result.test_code else None


def keep_wire(tx: Tx, result_id: int, result: Result) -> None:
    wire = wire_json(result)
    if wire:
        tx.set_result_wire(result_id, wire)


def record_gates(tx: Tx, analyzer: AnalyzerSettings, message_id: int, results: Sequence[Result]) -> None:
    """One warning and one ``alert_raised`` per message whose results had no test code."""
    gates = Counter(gate for result in results for gate in result.gates)
    missing = gates.get(TEST_CODE_MISSING, 0)
    if not missing:
        return
    log.warning("results_without_test_code", analyzer=analyzer.name, message_id=message_id, held=missing,
                component=analyzer.test_code_component)
    tx.audit("alert_raised", analyzer=analyzer.name, ref=str(message_id),
             data={"alert": "test_code_missing", "held": missing, "results": len(results),
                   "test_code_component": analyzer.test_code_component,
                   "hint": "check the analyzer's test_code_component; the results are held for review"})
