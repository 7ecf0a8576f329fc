"""Patient identity across sites: PID-3 with its assigning authority (CX.4) in and out."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import hl7

from labmw.mapping.hl7_inbound import map_hl7
from labmw.mapping.hl7_oru import build_oru
from labmw.model import Evaluation, Result

MSH = "MSH|^~\\&|AN|LAB|LIS|HOSP|20240501101500||ORU^R01^ORU_R01|MSG1|P|2.5.1"


def _patient(pid: str) -> Result:
    text = "\r".join((MSH, pid, "OBR|1||S1|ALT|||20240501080000", "OBX|1|NM|ALT||85|U/L|||||F")) + "\r"
    (result,) = map_hl7(text.encode(), analyzer="mx", encoding="utf-8", specimen_field="SPM-2",
                        lf_segments=False).results
    return result


def test_the_assigning_authority_is_read_from_pid3_and_pid2() -> None:
    assert (_patient("PID|||P1^^^NORTH&1.2.3&ISO^MR||DOE^JOHN").patient_authority) == "NORTH"
    assert _patient("PID|||P1||DOE^JOHN").patient_authority == ""
    assert _patient("PID||OLD7^^^SOUTH|||DOE^JOHN").patient_authority == "SOUTH"


def test_the_lis_gets_pid3_with_its_authority() -> None:
    result = Result(analyzer="mx", test_code="ALT", raw_value="85", value=Decimal("85"), units="U/L",
                    specimen_id="S1", patient_id="P1", patient_authority="NORTH")
    now = datetime(2024, 5, 1, tzinfo=UTC)
    oru = build_oru(result, Evaluation(method="ALT-T"), method=None, control_id="c1", now=now)
    pid = hl7.parse(oru.decode().replace("\n", "\r")).segment("PID")
    assert str(pid[3]) == "P1^^^NORTH"
    bare = build_oru(Result(analyzer="mx", test_code="ALT", raw_value="85", patient_id="P1"),
                     Evaluation(method="ALT-T"), method=None, control_id="c2", now=now)
    assert str(hl7.parse(bare.decode().replace("\n", "\r")).segment("PID")[3]) == "P1"
