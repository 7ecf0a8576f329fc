"""Answers to host queries (E1394 Q records): "no order", at once, so an analyzer never waits on labmw.

The flow (docs/ASTM.md §2.8, the e411 manual pp.50-51): the analyzer sends ``H(TSREQ^REAL) Q L`` in
its own ENQ..EOT session; the host opens a new session and replies ``H(TSDWN^REPLY) P O L``. The
e411 cancels a query left unanswered for 15 s, so labmw, whose scope is results, answers "no order"
itself instead of asking the LIS (ASTM.md §6 item 22).

The reply's O record must echo the specimen ID (O-3) and the instrument specimen ID (O-4) exactly as
the analyzer sent them in Q-3; if anything differs the analyzer cancels. Q-3 is ``patient ID ^
specimen ID ^ instrument fields...`` in E1394 (IDS-iSYS ``^7148344``, Roche Elecsys type
``^000004^40^0^5^^SAMPLE^NORMAL``), but Roche's cobas type leaves component 2 empty and puts the
sample ID in component 3 (``^^000004^40^0^5^^S1^SC``). Hence the rule below: the specimen ID is
component 2, or component 3 when 2 is empty, unless a profile names the component. The echoed text
is the raw (still escaped) text, so nothing the analyzer sent is re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labmw.wire.astm_records import Record, build_record, encode_records

__all__ = ["QUERY_MODES", "QueryKey", "answer_note", "answer_queries", "read_query"]

#: "no-order": answer every query with O-26 Y (Z without a specimen); "ignore": answer nothing.
QUERY_MODES = ("no-order", "ignore")
_O_FIELDS = 26  # the reply's O record runs to O-26, the report type (ASTM.md §2.5)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryKey:
    """What one Q record asks about.

    ``specimen_id``: the specimen ID, unescaped and stripped (for the audit trail; ``""`` when the
    query names none). ``o3`` and ``o4``: the raw Q-3 texts to echo in the reply's O-3 and O-4.
    ``cancel``: Q-13 is ``A``, the analyzer withdraws its last query (nothing to answer).
    """

    specimen_id: str
    o3: str
    o4: str
    cancel: bool


def read_query(query: Record, *, specimen_component: int | None = None) -> QueryKey:
    """Read the specimen a Q record asks about (Q-3, first repeat) and its request status (Q-13).

    ``specimen_component``: the Q-3 component holding the specimen ID; None picks component 2, or
    component 3 when 2 is empty (Roche cobas type, see the module docstring). Components after it
    are the instrument specimen ID. Raises ``ValueError`` when ``query`` is not a Q record or
    ``specimen_component`` is below 1.
    """
    if query.type != "Q":
        raise ValueError(f"expected a Q record, got {query.type!r}")
    if specimen_component is not None and specimen_component < 1:
        raise ValueError(f"component positions start at 1, got {specimen_component}")
    d = query.delimiters
    parts = query.raw(3).split(d.repeat)[0].split(d.component)
    if specimen_component is None:
        specimen_component = 3 if len(parts) > 2 and not parts[1] and parts[2] else 2
    o3 = parts[specimen_component - 1] if len(parts) >= specimen_component else ""
    o4 = d.component.join(parts[specimen_component:])
    specimen = query.component(3, specimen_component).strip() if o3 else ""
    return QueryKey(specimen_id=specimen, o3=o3, o4=o4, cancel=query.component(13, 1).strip().upper() == "A")


def answer_queries(
    queries: Sequence[Record],
    *,
    sender_name: str,
    mode: str = "no-order",
    encoding: str = "latin-1",
    specimen_component: int | None = None,
    header_comment: Sequence[str] = ("TSDWN", "REPLY"),
) -> list[bytes]:
    """Build one reply message per Q record: H, P, O (no order), L, as message text for the link.

    ``sender_name`` goes in H-5; ``header_comment`` is H-11's components (Roche's ``TSDWN^REPLY``;
    empty for none). The O record echoes Q-3 (see :func:`read_query`), has an empty O-5 (no tests)
    and O-26 ``Y`` (no order for this specimen), or ``Z`` when the query names no specimen. Each
    reply uses the delimiters of its query and ``encoding``. A cancel (Q-13 ``A``) gets no reply,
    and mode "ignore" answers nothing.

    Returns the reply texts in query order. Raises ``ValueError`` for an unknown ``mode`` or a
    record that is not a Q record, and :class:`~labmw.errors.CodecError` when ``sender_name`` or
    ``header_comment`` cannot be written in the record text or in ``encoding``.
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"query mode {mode!r} is not one of {QUERY_MODES}")
    replies: list[bytes] = []
    for query in queries:
        key = read_query(query, specimen_component=specimen_component)
        if mode == "ignore" or key.cancel:
            continue
        d = query.delimiters
        comment: str | list[Sequence[str]] = [list(header_comment)] if header_comment else ""
        header = build_record(["H", "", "", "", sender_name, "", "", "", "", "", comment, "P", "1"], d)
        fields = ["O", "1", key.o3, key.o4] + [""] * (_O_FIELDS - 5) + ["Y" if key.specimen_id else "Z"]
        order = Record(tuple(fields), d)
        replies.append(encode_records([header, ["P", "1"], order, ["L", "1", "N"]], d, encoding=encoding))
    return replies


def answer_note(key: QueryKey, *, mode: str, error: str = "") -> str:
    """Say in words how the query ``key`` is answered under ``mode`` (for its audit row).

    ``error`` is why no reply could be built, if that happened. Raises nothing.
    """
    if key.cancel:
        return "none: the analyzer cancelled its query"
    if mode == "ignore":
        return "none: query_mode is ignore"
    if error:
        return f"none: reply not built: {error}"
    return "no order (Y)" if key.specimen_id else "no record (Z)"
