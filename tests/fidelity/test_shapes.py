"""Issue 13: every result identified, kept as sent, never lost without a trace — replaying the traffic shapes
that exposed each point (GeneXpert, ARCHITECT, Sysmex XP-100/XN, BioSystems BA400 over HL7, LAW queries)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from fidelity_rig import ALT, Rig, astm_analyzer, hl7_analyzer, text, with_map

from labmw.model import Method
from labmw.wire.hl7_codec import parse_ack

# GeneXpert (H|@^\): analyte^^^target^measure, qualitative^quantitative values (Cepheid LIS protocol shape).
GENEXPERT = (
    b"H|@^\\|URM-1||GeneXpert PC^GeneXpert^4.8|||||LIS||P|1394-97|20261125091500\r"
    b"P|1|||PT-9|^^\r"
    b"O|1|GX-778||^^^MTB-RIF|R|20261125080000|||||||||ORH||||||||||F\r"
    b"R|1|^MTB-RIF^^MTB-RIF^Xpert MTB-RIF Assay G4^5^MTB^|MTB NOT DETECTED^|||||F||Lab Tech|20261125090000\r"
    b"R|2|^MTB-RIF^^MTB-RIF^Xpert MTB-RIF Assay G4^5^rpoB1^Ct|^24.7|||||F||Lab Tech|20261125090000\r"
    b"R|3|^MTB-RIF^^MTB-RIF^Xpert MTB-RIF Assay G4^5^rpoB1^EndPt|^182.0|||||F||Lab Tech|20261125090000\r"
    b"R|4|^MTB-RIF^^MTB-RIF^Xpert MTB-RIF Assay G4^5^rpoB2^Ct|^25.1|||||F||Lab Tech|20261125090000\r"
    b"R|5|^MTB-RIF^^MTB-RIF^Xpert MTB-RIF Assay G4^5^Rif Resistance^|NOT DETECTED^|||||F||Lab Tech|"
    b"20261125090000\r"
    b"L|1|N\r"
)
# ARCHITECT: one assay number, final result / interpretation / RLU; flags with components.
ARCHITECT = (
    b"H|\\^&|||ARCHITECT^9.45^F3453010030^H1P1O1R1C1Q1L1|||||||P|1|20261125100000\r"
    b"P|1|||PT-3\r"
    b"O|1|AR-55||^^^684^HBsAgQ2^UNDILUTED^P|||||||||||||||||||||F\r"
    b"R|1|^^^684^HBsAgQ2^UNDILUTED^P^F|0.12|IU/mL||EXP^<||F||||20261125095900\r"
    b"R|2|^^^684^HBsAgQ2^UNDILUTED^P^I|NONREACTIVE|||||F||||20261125095900\r"
    b"R|3|^^^684^HBsAgQ2^UNDILUTED^P^P|1520|RLU||||F||||20261125095900\r"
    b"L|1\r"
)
# Sysmex XP-100: the sample number in O-4 component 3, the test code in R-3 component 5.
XP100 = (
    b"H|\\^&|||XP-100^00-12^12345^^^^^|||||||E1394-97\r"
    b"P|1\r"
    b"O|1||^^          1042^B|^^^^WBC\\^^^^RBC|||||||N||||||||||||||F\r"
    b"R|1|^^^^WBC^1|  6.2|10*3/uL||N||||||20261125090000\r"
    b"R|2|^^^^RBC^1|  4.71|10*6/uL||N||||||20261125090000\r"
    b"R|3|^^^^HGB^1| 14.2|g/dL||N||||||20261125090000\r"
    b"L|1|N\r"
)


@pytest.fixture(name="rig")
def _rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, astm_analyzer("gx", test_code_component=4), astm_analyzer("arch"),
              astm_analyzer("xp"), astm_analyzer("xp5", test_code_component=5, specimen_field="O-4",
                                                specimen_component=3),
              hl7_analyzer("ba400"), hl7_analyzer("law", specimen_field="SPM-2"), group="result")
    yield rig
    rig.close()


def test_genexpert_identity_is_kept_whole_and_values_as_sent(rig: Rig) -> None:
    outcome = rig.astm("gx", GENEXPERT)
    assert (outcome.results, outcome.queued, outcome.held) == (5, 5, 0)
    obx = rig.obx()
    ids = [text(s, 3) for s in obx]
    assert len(set(ids)) == 5, f"the LIS must tell every result apart: {ids}"
    escaped = r"MTB-RIF\S\Xpert MTB-RIF Assay G4\S\5\S\rpoB1\S\Ct"
    assert ids[1] == f"{escaped}^{escaped}^L"
    # python-hl7 unescapes the identifier back to exactly what the instrument sent from component 4 on.
    unescaped = hl7.parse(rig.sent()[1].__str__()).unescape(str(obx[1][3][0][0]))
    assert unescaped == "MTB-RIF^Xpert MTB-RIF Assay G4^5^rpoB1^Ct"
    assert [(text(s, 2), text(s, 5)) for s in obx] == [
        ("ST", "MTB NOT DETECTED"), ("SN", "^24.7"), ("SN", "^182.0"), ("SN", "^25.1"), ("ST", "NOT DETECTED")]
    assert "\\S\\" not in "".join(text(s, 5) for s in obx), "no component of a value is turned into text"


def test_genexpert_multi_component_map(rig: Rig, tmp_path: Path) -> None:
    ct = Method(name="RPOB1-CT", analyte="rpoB1 Ct", units="")
    mapped = with_map(astm_analyzer("gx"), **{"MTB-RIF^Xpert MTB-RIF Assay G4^5^rpoB1^Ct": "RPOB1-CT"})
    rig2 = Rig(tmp_path / "b", mapped, methods={"RPOB1-CT": ct}, group="result")
    try:
        rig2.astm("gx", GENEXPERT)
        methods = [r["method"] for r in rig2.query("SELECT method FROM results ORDER BY id")]
        assert methods == [None, "RPOB1-CT", None, None, None], "the full identifier selects the method"
    finally:
        rig2.close()


def test_architect_final_interpretation_rlu_are_distinct_and_flags_split(rig: Rig) -> None:
    rig.astm("arch", ARCHITECT)
    obx = rig.obx()
    assert [text(s, 3).split("^")[0] for s in obx] == [
        r"684\S\HBsAgQ2\S\UNDILUTED\S\P\S\F", r"684\S\HBsAgQ2\S\UNDILUTED\S\P\S\I",
        r"684\S\HBsAgQ2\S\UNDILUTED\S\P\S\P"]
    assert text(obx[0], 8) == "EXP~<", "a flag with components is several flags, none escaped into text"
    assert (text(obx[1], 2), text(obx[1], 5)) == ("ST", "NONREACTIVE")


def test_identity_collision_in_one_message_is_held(rig: Rig) -> None:
    flat = ARCHITECT.replace(b"^P^F|", b"^P|").replace(b"^P^I|", b"^P|").replace(b"^P^P|", b"^P|")
    outcome = rig.astm("arch", flat)
    assert (outcome.queued, outcome.held) == (0, 3)
    assert all("IDENTITY_COLLISION" in r["gates"] for r in rig.held())
    assert rig.sent() == []


def test_no_test_code_in_configured_component_is_held_and_alerted(rig: Rig) -> None:
    outcome = rig.astm("xp", XP100)  # default component 4: the XP-100's codes are in 5
    assert (outcome.results, outcome.queued, outcome.held) == (3, 0, 3), "held, never ACKed and lost"
    held = rig.held()
    assert all("TEST_CODE_MISSING" in r["gates"] for r in held)
    assert [r["raw_value"] for r in held] == ["  6.2", "  4.71", " 14.2"]
    (alert,) = rig.events("alert_raised")
    assert alert["data"]["alert"] == "test_code_missing" and alert["data"]["held"] == 3
    assert rig.store.counts()["held_test_code_missing"] == 3


def test_specimen_in_o4_component_3(rig: Rig) -> None:
    rig.astm("xp5", XP100)
    messages = rig.sent()
    assert len(messages) == 3 and {str(m.segment("OBR")[3]) for m in messages} == {"1042"}
    assert [text(s, 3).split("^")[0] for s in rig.obx()] == [r"WBC\S\1", r"RBC\S\1", r"HGB\S\1"]


def test_empty_specimen_id_is_held(rig: Rig) -> None:
    outcome = rig.astm("xp", XP100.replace(b"^^          1042^B", b"").replace(b"^^^^", b"^^^"))
    assert outcome.held == 3 and all("NO_SPECIMEN_ID" in r["gates"] for r in rig.held())


BA400 = ("MSH|^~\\&|BA400|BIOSYSTEMS|LIS||20261125101500||ORU^R01^ORU_R01|B4-1|P|2.5.1\r"
         "PID|||PT-4||DOE^JOHN||19800101|M\r"
         "OBR|1||BA-9|PANEL|||20261125080000\r"
         "OBX|1|NM|ALT^ALT^A400||35|U/L^U/L^A400|||||F\r"
         "OBX|2|SN|GLU^Glucose^A400||^182|mg/dL^mg/dL^A400|||||F\r"
         "OBX|3|ST|SG^Specific gravity^A400||<=1.005||||||F\r"
         "OBX|4|SN|CREA^Creatinine^A400||<^0.2|mg/dL|||||F\r")


def test_hl7_composite_units_sn_and_st_are_kept(rig: Rig) -> None:
    assert parse_ack(rig.hl7("ba400", BA400.encode())).code == "AA"
    obx = rig.obx()
    assert [text(s, 3) for s in obx] == ["ALT^ALT^A400", "GLU^Glucose^A400", "SG^Specific gravity^A400",
                                        "CREA^Creatinine^A400"]
    assert [(text(s, 2), text(s, 5), text(s, 6)) for s in obx] == [
        ("NM", "35", "U/L^U/L^A400"), ("SN", "^182", "mg/dL^mg/dL^A400"), ("ST", "<=1.005", ""),
        ("SN", "<^0.2", "mg/dL")]


def test_hl7_crlf_segments_are_read(rig: Rig) -> None:
    ack = rig.hl7("ba400", BA400.replace("\r", "\r\n").encode())
    assert parse_ack(ack).code == "AA"
    assert len(rig.obx()) == 4
    (received,) = rig.events("message_received")
    assert received["data"]["results"] == 4


def test_law_order_query_gets_rsp_k11_no_order_at_once(rig: Rig) -> None:
    qbp = ("MSH|^~\\&|c303|ROCHE|LIS||20261125101600||QBP^Q11^QBP_Q11|Q-77|P|2.5.1|||NE|AL\r"
           "QPD|WOS^Work Order Step^IHE_LABTF|Q-77-T|498151&BARCODE\r"
           "RCP|I||R\r")
    answer = hl7.parse(rig.hl7("law", qbp.encode()).decode())
    assert str(answer.segment("MSH")[9]) == "RSP^K11^RSP_K11"
    assert str(answer.segment("MSA")[1]) == "AA" and str(answer.segment("MSA")[2]) == "Q-77"
    assert str(answer.segment("QAK")[1]) == "Q-77-T" and str(answer.segment("QAK")[2]) == "NF"
    assert str(answer.segment("QPD")[3]) == "498151&BARCODE"
    (query,) = rig.events("host_query_received")
    assert query["specimen"] == "498151" and query["data"]["protocol"] == "hl7"


def test_specimen_grouping_sends_one_oru_per_specimen(tmp_path: Path) -> None:
    rig = Rig(tmp_path, astm_analyzer("gx"), group="specimen")
    try:
        outcome = rig.astm("gx", GENEXPERT)
        assert outcome.queued == 5
        (message,) = rig.sent()
        assert len(message.segments("OBR")) == 1 and len(message.segments("OBX")) == 5
        assert [str(s[1]) for s in message.segments("OBX")] == ["1", "2", "3", "4", "5"]
        rows = rig.query("SELECT control_id, result_id FROM outbox")
        first = rig.query("SELECT min(id) AS id FROM results")[0]["id"]
        assert len(rows) == 1 and rows[0]["control_id"] == f"{rig.store.install_id}-{first}"
        assert len(rig.query("SELECT * FROM outbox_members")) == 4
        (entry,) = rig.store.outbox(states=("pending",))
        rig.store.mark_delivered(entry, now=rig.pipeline.clock(), ack_code="AA", ack_text="")
        states = {r["state"] for r in rig.query("SELECT state FROM results")}
        assert states == {"delivered"}, "the LIS's ACK of the specimen's ORU delivers every result in it"
    finally:
        rig.close()


def test_specimen_grouping_holds_stay_out_and_go_later(tmp_path: Path) -> None:
    from labmw.daemon.review import decide

    rig = Rig(tmp_path, with_map(astm_analyzer("c"), ALTL="ALT-T"), group="specimen",
              methods={"ALT-T": ALT})
    try:
        text_ = (b"H|\\^&\rP|1||P1||DOE^J||19800101|M\rO|1|S1\r"
                 b"R|1|^^^ALTL|35|U/L||N||F\rR|2|^^^ALTL^X|40|U/L||N||F\rR|3|^^^ALTL^X|41|U/L||N||F\rL|1\r")
        outcome = rig.astm("c", text_)
        assert (outcome.queued, outcome.held) == (1, 2)  # R2 and R3 collide
        held = rig.held()
        decide(rig.settings, rig.store, held[0]["id"], decision="release", reason="checked", actor="t",
               now=rig.pipeline.clock())
        assert [len(m.segments("OBX")) for m in rig.sent()] == [1, 1], "a released result goes in a later ORU"
    finally:
        rig.close()
