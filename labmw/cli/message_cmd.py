"""`labmw message list|show|reprocess`: the message browser — from an analyzer's bytes to the LIS's ACK."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from labmw.cli.common import open_store, parse_time, print_json, print_table, settings
from labmw.errors import UsageError
from labmw.wire.visible import show_bytes

message_app = typer.Typer(no_args_is_help=True, help="Browse stored messages: search, trace, reprocess.")


def register(app: typer.Typer) -> None:
    app.add_typer(message_app, name="message")


@message_app.command("list")
def message_list(
    ctx: typer.Context,
    analyzer: Annotated[str | None, typer.Option(help="Only messages from this analyzer.")] = None,
    specimen: Annotated[str | None, typer.Option(help="Only messages with a result of this specimen ID.")] = None,
    since: Annotated[str | None, typer.Option(help="Received at or after (ISO 8601, UTC if no offset).")] = None,
    until: Annotated[str | None, typer.Option(help="Received at or before (ISO 8601, UTC if no offset).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Stored messages, newest first, with what they became."""
    if limit < 1:
        raise UsageError(f"--limit: expected a positive number, got {limit}")
    store = open_store(ctx)
    try:
        rows = store.browse_messages(analyzer=analyzer, specimen=specimen, since=parse_time(since, "--since"),
                                     until=parse_time(until, "--until"), limit=limit)
    finally:
        store.close()
    if json_:
        print_json(rows)
        return
    print_table(("ID", "RECEIVED", "ANALYZER", "PROTOCOL", "OUTCOME", "BYTES", "RESULTS", "HELD", "DELIVERED",
                 "SPECIMENS"),
                [(r["id"], r["received_at"], r["analyzer"], r["protocol"], r["outcome"], r["bytes"], r["results"],
                  r["held"], r["delivered"], ", ".join(r["specimens"])) for r in rows])


@message_app.command("show")
def message_show(ctx: typer.Context, message_id: Annotated[int, typer.Argument(help="The message ID (message list).")],
                 json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """One message: raw bytes as received, its records, each result with its rule outcomes, every ORU sent and
    the LIS's answer."""
    store = open_store(ctx)
    try:
        detail = store.message_detail(message_id)
    finally:
        store.close()
    records = _records(detail)
    if json_:
        print_json({**detail, "raw": show_bytes(detail["raw"]), "records": records,
                    "sent": [{**o, "payload": show_bytes(o["payload"])} for o in detail["sent"]]})
        return
    typer.echo(f"message {detail['id']}  {detail['received_at']}  {detail['analyzer']} ({detail['protocol']})  "
               f"from {detail['peer']}  {detail['outcome']}  sha256 {detail['sha256'][:16]}...")
    typer.echo("\n-- bytes as received --")
    typer.echo(show_bytes(detail["raw"]))
    typer.echo("\n-- records --")
    for number, record in enumerate(records, start=1):
        typer.echo(f"{number:>3}  {record}")
    typer.echo("\n-- results --")
    for r in detail["results"]:
        typer.echo(f"result {r['id']}  specimen {r['specimen'] or '-'}  test {r['test_id'] or r['test_code'] or '-'}"
                   f"  value {r['raw_value']!r} {r['units']}  status {r['status'] or '-'}  -> {r['state']}"
                   f"  method {r['method'] or '-'}  flags {','.join(r['flags']) or '-'}"
                   f"  range {r['applied_range'] or '-'}"
                   + (f"  sent in {', '.join(r['sent_in'])}" if r["sent_in"] else ""))
        for d in r["decisions"]:
            typer.echo(f"       rule {d.get('rule')}: {d.get('outcome')}")
        for note in r["notes"]:
            typer.echo(f"       note: {note}")
    typer.echo("\n-- sent to the LIS --")
    if not detail["sent"]:
        typer.echo("nothing (held, rejected, or not sendable)")
    for o in detail["sent"]:
        typer.echo(f"MSH-10 {o['control_id']}  {o['state']}  attempts {o['attempts']}  results {o['result_ids']}")
        typer.echo(show_bytes(o["payload"]))
        for a in o["answers"]:
            typer.echo(f"  LIS answered {a['ack_code'] or a['event']} {a['ack_text'] or a['error']} at {a['ts']}")


def _records(detail: dict[str, Any]) -> list[str]:
    """The message's records (ASTM frames reassembled; HL7 segments), as text."""
    raw: bytes = detail["raw"]
    if detail["protocol"] == "astm":
        from labmw.cli.simulate_cmd import astm_messages

        try:
            texts = astm_messages(raw)
        except Exception:  # noqa: BLE001 - a stored message that cannot be read is shown as bytes only
            return []
        return [line for text in texts for line in text.decode("latin-1").replace("\n", "\r").split("\r") if line]
    return [line for line in raw.decode("utf-8", errors="replace").replace("\n", "\r").split("\r") if line]


@message_app.command("reprocess")
def message_reprocess(ctx: typer.Context,
                      message_id: Annotated[int, typer.Argument(help="The message ID (message list).")],
                      reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "") -> None:
    """Run a stored message through today's mapping and rules again; delivered results are re-sent as corrections
    only when their content changed."""
    from labmw.config_edit import os_user
    from labmw.daemon.reprocess import reprocess

    cfg = settings(ctx)
    if not reason.strip():
        raise UsageError("--reason: a reason is required to reprocess a message")
    store = open_store(ctx, cfg)
    try:
        summary = reprocess(cfg, store, message_id, reason=reason, actor=os_user())
    finally:
        store.close()
    typer.echo(f"message {message_id} reprocessed: {summary['unchanged']} unchanged, {summary['corrected']} sent as "
               f"corrections, {summary['replaced']} replaced (were not delivered), {summary['new']} new, "
               f"{summary['held']} held")
