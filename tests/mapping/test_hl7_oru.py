"""Outbound ORU^R01: python-hl7 and hl7apy as independent oracles, plus a real MLLP round trip."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import hl7
import hl7.mllp
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from labmw.errors import LocalProtocolError, MappingError
from labmw.mapping.hl7_oru import build_oru
from labmw.model import Evaluation, Method, Result
from labmw.wire.hl7_codec import parse_ack
from labmw.wire.mllp import BlockReceived, FrameEvent, MllpFramer, frame

NOW = datetime(2024, 5, 1, 10, 15, 0, tzinfo=timezone.utc)
ALT = Method(
    name="ALT IFCC with P5P",
    analyte="Alanine aminotransferase",
    units="U/L",
    loinc="1742-6",
)
RESULT = Result(
    analyzer="cobas-1",
    test_code="ALTL",
    raw_value="75",
    value=Decimal(75),
    units="U/L",
    instrument_flags=("H",),
    status="F",
    completed_at=datetime(2024, 5, 1, 9, 58, 12),
    specimen_id="S0001",
    collected_at=datetime(2024, 5, 1, 7, 30, 0),
    patient_id="P123",
    patient_name="DOE^JANE",
    birth_date=date(1980, 2, 29),
    sex="F",
    sequence=1,
)
FLAGGED = Evaluation(
    method=ALT.name,
    flags=("U",),
    applied_range="9-59",
    notes=("1.3 x ULN", "delta +180% vs 2024-04-28"),
)


def build(
    result: Result = RESULT, evaluation: Evaluation = FLAGGED, method: Method | None = ALT
) -> bytes:
    """build_oru with fixed control id and clock."""
    return build_oru(result, evaluation, method=method, control_id="OUT-17", now=NOW)


def segment_ids(message: hl7.Message) -> list[str]:
    """Segment IDs in order."""
    return [str(segment[0]) for segment in message]


def test_segment_order_follows_oru_r01_grouping() -> None:
    """MSH, PID, OBR, OBX, its NTEs, then SPM closing the order group."""
    message = hl7.parse(build())
    assert segment_ids(message) == ["MSH", "PID", "OBR", "OBX", "NTE", "NTE", "SPM"]


def test_msh_header() -> None:
    """MSH carries our applications, now with offset, ORU^R01^ORU_R01, control id, P, 2.5.1."""
    raw = build_oru(
        RESULT,
        FLAGGED,
        method=ALT,
        control_id="OUT-17",
        now=NOW,
        sending_facility="LAB1",
        receiving_facility="HOSP",
    )
    assert raw.split(b"\r")[0] == (
        b"MSH|^~\\&|LABMW|LAB1|LIS|HOSP|20240501101500+0000||ORU^R01^ORU_R01|OUT-17|P|2.5.1"
    )
    assert raw.endswith(b"\r")


def test_pid_fields() -> None:
    """PID-3 id, PID-5 name components as given, PID-7 birth date, PID-8 sex."""
    message = hl7.parse(build())
    assert message["PID.F3"] == "P123"
    assert (message["PID.F5.R1.C1"], message["PID.F5.R1.C2"]) == ("DOE", "JANE")
    assert message["PID.F7"] == "19800229"
    assert message["PID.F8"] == "F"


def test_obr_fields() -> None:
    """OBR-3 specimen, OBR-4 test identifier, OBR-7 collection time, OBR-25 status."""
    message = hl7.parse(build())
    assert message["OBR.F1"] == "1"
    assert message["OBR.F3"] == "S0001"
    assert str(message.segment("OBR")(4)) == "1742-6^Alanine aminotransferase^LN^ALTL^ALTL^L"
    assert message["OBR.F7"] == "20240501073000"
    assert message["OBR.F25"] == "F"


def test_obx_fields_with_loinc() -> None:
    """OBX carries NM value, LOINC-coded id, units, range, flags H~U, status, method, analyzer."""
    message = hl7.parse(build())
    obx = message.segment("OBX")
    assert message["OBX.F1"] == "1"
    assert message["OBX.F2"] == "NM"
    assert str(obx(3)) == "1742-6^Alanine aminotransferase^LN^ALTL^ALTL^L"
    assert str(obx(5)) == "75"
    assert message["OBX.F6"] == "U/L"
    assert message["OBX.F7"] == "9-59"
    assert str(obx(8)) == "H~U"
    assert (message["OBX.F8.R1"], message["OBX.F8.R2"]) == ("H", "U")
    assert message["OBX.F11"] == "F"
    assert message["OBX.F14"] == "20240501073000"
    assert message["OBX.F17"] == "ALT IFCC with P5P"
    assert message["OBX.F18"] == "cobas-1"
    assert message["OBX.F19"] == "20240501095812"


def test_instrument_flag_alone_when_labmw_adds_none() -> None:
    """Without labmw flags OBX-8 is exactly the instrument's flag H."""
    message = hl7.parse(build(evaluation=Evaluation(method=ALT.name, applied_range="9-59")))
    assert str(message.segment("OBX")(8)) == "H"


def test_labmw_flags_follow_instrument_flags() -> None:
    """Instrument N then labmw H gives N~H; no flags at all leaves OBX-8 empty."""
    result = replace(RESULT, instrument_flags=("N",))
    message = hl7.parse(build(result, replace(FLAGGED, flags=("H",))))
    assert str(message.segment("OBX")(8)) == "N~H"
    bare = hl7.parse(build(replace(RESULT, instrument_flags=()), replace(FLAGGED, flags=())))
    assert message["OBX.F8"] and bare["OBX.F8"] == ""


def test_obx3_without_loinc_uses_local_code() -> None:
    """A method without LOINC, or no method, codes OBX-3 as the local test code."""
    for method in (replace(ALT, loinc=""), None):
        message = hl7.parse(build(method=method))
        assert str(message.segment("OBX")(3)) == "ALTL^ALTL^L"
    assert hl7.parse(build(method=None))["OBX.F17"] == ""


def test_units_fall_back_to_method_units() -> None:
    """When the instrument sent no units, OBX-6 carries the method's."""
    message = hl7.parse(build(replace(RESULT, units=""), method=replace(ALT, units="IU/L")))
    assert message["OBX.F6"] == "IU/L"


def test_comparator_value_is_structured_numeric() -> None:
    """'<5' goes out as SN with the instrument's comparator and digits unchanged."""
    result = replace(RESULT, raw_value="<5", value=Decimal(5), comparator="<")
    message = hl7.parse(build(result))
    assert message["OBX.F2"] == "SN"
    assert (message["OBX.F5.R1.C1"], message["OBX.F5.R1.C2"]) == ("<", "5")
    assert str(message.segment("OBX")(5)).replace("^", "") == "<5"


def test_comparator_value_already_in_sn_form() -> None:
    """A raw value that already is SN ('>=^700') is sent as it came."""
    result = replace(RESULT, raw_value=">=^700", value=Decimal(700), comparator=">=")
    message = hl7.parse(build(result))
    assert (message["OBX.F2"], str(message.segment("OBX")(5))) == ("SN", ">=^700")


def test_numeric_text_is_not_reformatted() -> None:
    """Reported precision survives: '75.0' stays '75.0' with type NM."""
    message = hl7.parse(build(replace(RESULT, raw_value="75.0", value=Decimal("75.0"))))
    assert (message["OBX.F2"], str(message.segment("OBX")(5))) == ("NM", "75.0")


@pytest.mark.parametrize(
    ("raw", "value", "comparator"),
    [("POS", None, None), ("1.2E3", Decimal(1200), None), ("< 5 U", Decimal(5), "<")],
)
def test_other_values_are_string(raw: str, value: Decimal | None, comparator: str | None) -> None:
    """Text, exponents and comparator text SN cannot express go out as ST, verbatim."""
    result = replace(RESULT, raw_value=raw, value=value, comparator=comparator)
    message = hl7.parse(build(result))
    assert message["OBX.F2"] == "ST"
    assert message["OBX.F5"] == raw


def test_values_with_delimiters_are_escaped() -> None:
    """A value with | and ^ is escaped on the wire and reads back unchanged."""
    result = replace(RESULT, raw_value="see|note^2", value=None, specimen_id="S|1^x")
    raw = build(result)
    assert b"|ST|" in raw and b"see\\F\\note\\S\\2" in raw
    message = hl7.parse(raw)
    assert message["OBX.F5"] == "see|note^2"
    assert message["OBR.F3"] == "S|1^x"
    assert message["SPM.F2"] == "S|1^x"
    assert len(message.segment("OBX")) == 20


def test_name_components_are_escaped_individually() -> None:
    """PID-5 keeps FAMILY^GIVEN structure but escapes delimiters inside a component."""
    message = hl7.parse(build(replace(RESULT, patient_name="O&NEIL|X^ANN")))
    assert (message["PID.F5.R1.C1"], message["PID.F5.R1.C2"]) == ("O&NEIL|X", "ANN")


def test_notes_become_nte_after_obx() -> None:
    """Each evaluation note is an NTE with set id, source O and the labmw: prefix."""
    message = hl7.parse(build(evaluation=replace(FLAGGED, notes=("a|b", "second"))))
    ntes = message.segments("NTE")
    assert [str(nte(1)) for nte in ntes] == ["1", "2"]
    assert [str(nte(2)) for nte in ntes] == ["O", "O"]
    assert message["NTE.F3"] == "labmw: a|b"
    assert message["NTE2.F3"] == "labmw: second"


def test_spm_identifies_specimen() -> None:
    """SPM-1 is 1, SPM-2 the specimen id, SPM-4 the table-0353 'unknown' status."""
    message = hl7.parse(build())
    assert (message["SPM.F1"], message["SPM.F2"]) == ("1", "S0001")
    assert str(message.segment("SPM")(4)) == "U^Unknown^HL70353"


def test_aware_times_keep_their_offset() -> None:
    """Aware collection/completion times are written with their own offset."""
    plus2 = timezone(timedelta(hours=2))
    result = replace(
        RESULT,
        collected_at=datetime(2024, 5, 1, 7, 30, tzinfo=plus2),
        completed_at=datetime(2024, 5, 1, 9, 58, 12, tzinfo=plus2),
    )
    message = hl7.parse(build(result))
    assert message["OBR.F7"] == "20240501073000+0200"
    assert message["OBX.F14"] == "20240501073000+0200"
    assert message["OBX.F19"] == "20240501095812+0200"


def test_no_patient_data_means_no_pid() -> None:
    """A result without any patient data omits the optional PATIENT group."""
    result = replace(RESULT, patient_id="", patient_name="", birth_date=None, sex="")
    assert "PID" not in segment_ids(hl7.parse(build(result)))


def test_missing_test_code_or_status_is_a_mapping_error() -> None:
    """OBX-3 and OBX-11 are required, so a result without them cannot be encoded."""
    with pytest.raises(MappingError):
        build(replace(RESULT, test_code=""))
    with pytest.raises(MappingError):
        build(replace(RESULT, status=""))


def test_naive_now_is_refused() -> None:
    """MSH-7 must carry an offset, so a naive clock reading is a programming error."""
    with pytest.raises(LocalProtocolError):
        build_oru(RESULT, FLAGGED, method=ALT, control_id="1", now=datetime(2024, 5, 1))


def test_hl7apy_strict_validation_accepts_message() -> None:
    """hl7apy STRICT parses and validates the ORU, finding SPM in the SPECIMEN group."""
    for result in (RESULT, replace(RESULT, raw_value="<5", value=Decimal(5), comparator="<")):
        message = parse_message(
            build(result).decode(), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        assert message.validate()
        order = message.ORU_R01_PATIENT_RESULT.ORU_R01_ORDER_OBSERVATION
        assert [child.name for child in order.children] == [
            "OBR",
            "ORU_R01_OBSERVATION",
            "ORU_R01_SPECIMEN",
        ]
        assert [child.name for child in order.ORU_R01_OBSERVATION.children] == [
            "OBX",
            "NTE",
            "NTE",
        ]


def test_round_trip_over_real_socket() -> None:
    """python-hl7's MLLP server receives our framed ORU and its ACK pairs with our MSH-10."""
    payload = build()

    async def scenario() -> tuple[list[hl7.Message], list[FrameEvent]]:
        received: list[hl7.Message] = []

        async def handle(
            reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
        ) -> None:
            try:
                message = await asyncio.wait_for(reader.readmessage(), 5)
                received.append(message)
                writer.writemessage(message.create_ack("AA", message_id="LIS-1"))
                await writer.drain()
            finally:
                writer.close()

        server = await hl7.mllp.start_hl7_server(
            handle, "127.0.0.1", 0, encoding="utf-8", limit=1024 * 1024
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(frame(payload))
            await writer.drain()
            framer = MllpFramer()
            events: list[FrameEvent] = []
            while not any(isinstance(event, BlockReceived) for event in events):
                chunk = await asyncio.wait_for(reader.read(4096), 5)
                if not chunk:
                    break
                events.extend(framer.feed(chunk))
            writer.close()
            await writer.wait_closed()
        return received, events

    received, events = asyncio.run(scenario())
    assert len(received) == 1 and received[0]["OBX.F7"] == "9-59"
    acks = [event.payload for event in events if isinstance(event, BlockReceived)]
    assert len(acks) == 1
    ack = parse_ack(acks[0])
    assert (ack.code, ack.control_id, ack.message_type) == ("AA", "OUT-17", "ACK^R01^ACK")
