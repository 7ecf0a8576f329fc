"""The ASTM side of the intake: one complete message (H..L) -> :class:`Decoded` or :class:`Rejected`.

Pure (no store, no I/O): runs off the store thread. The answer on an ASTM link is the link
engine's ACK or NAK of the completing frame, chosen by the pump from ``Outcome.stored``; what this
adapter adds to the answer is the host-query replies, built here so that the store thread never
encodes them.
"""

from __future__ import annotations

from collections.abc import Sequence

from labmw.config import AnalyzerSettings, Settings
from labmw.daemon.fidelity import astm_profile
from labmw.daemon.pipeline import AuditNote, Decoded, Rejected, ResendKey, astm_content_key
from labmw.errors import CodecError, MappingError
from labmw.mapping.astm_lis2a import map_message
from labmw.mapping.astm_query import answer_note, answer_queries, read_query
from labmw.model import Outcome
from labmw.wire.astm_records import Record, decode_message


class AstmAdapter:
    """Decodes one analyzer's ASTM messages (its profile: components, encoding, query mode)."""

    protocol = "astm"

    def __init__(self, analyzer: AnalyzerSettings, settings: Settings) -> None:
        self.analyzer = analyzer
        self.settings = settings
        self.profile = astm_profile(analyzer)  # test code component, specimen field and component (issue 13)

    def decode(self, text: bytes) -> Decoded | Rejected:
        """The message text (records ending with CR) -> what to store. Raises nothing for content
        errors (they become :class:`Rejected`); anything else is the intake boundary's to catch."""
        analyzer = self.analyzer
        try:
            records = decode_message(text, encoding=analyzer.encoding)
            mapped = map_message(records, analyzer=analyzer.name, profile=self.profile)
        except (CodecError, MappingError) as exc:
            return Rejected(protocol=self.protocol, reason=str(exc))
        # Host queries are answered at once, never forwarded: the analyzer must not wait on us.
        replies, reply_error = self._answer_queries(mapped.queries)
        notes = []
        for query in mapped.queries:
            key = read_query(query)
            # The specimen only: Q-3 component 1 is a patient ID and stays out of the audit.
            notes.append(AuditNote(event="host_query_received", specimen=key.specimen_id,
                                   data={"sequence": query.text(2), "request_status": query.component(13, 1),
                                         "tests": query.text(5), "mode": analyzer.query_mode,
                                         "answer": answer_note(key, mode=analyzer.query_mode, error=reply_error)}))
        return Decoded(protocol=self.protocol, sender=mapped.sender, results=tuple(mapped.results),
                       problems=tuple(mapped.problems), notes=tuple(notes), replies=tuple(replies),
                       # A message with queries is answered every time; it is only recorded as the last one.
                       resend=ResendKey(scope="record" if mapped.queries or not mapped.results else "link",
                                        content=astm_content_key(text)))

    def answer(self, item: Decoded | Rejected | None, outcome: Outcome, payload: bytes = b"") -> bytes:
        """Nothing to write: the link engine ACKs (stored) or NAKs (not stored) the final frame."""
        return b""

    def _answer_queries(self, queries: Sequence[Record]) -> tuple[list[bytes], str]:
        """The reply messages for ``queries`` per the analyzer's query mode, and why none could be built."""
        if not queries:
            return [], ""
        name = self.settings.lis.sending_application if self.settings.lis else "LABMW"
        try:
            return answer_queries(queries, sender_name=name, mode=self.analyzer.query_mode,
                                  encoding=self.analyzer.encoding), ""
        except CodecError as exc:
            return [], str(exc)
