"""`labmw audit list|verify|head|export`: the trail, for reviewers and auditors."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, Any

import typer

from labmw.cli.common import open_store, parse_time, print_json, print_table
from labmw.errors import UsageError
from labmw.store.audit import AuditEvent, parse_head

audit_app = typer.Typer(no_args_is_help=True, help="Review, verify and export the audit trail.")

Specimen = Annotated[str | None, typer.Option(help="Only events about this specimen ID.")]
Patient = Annotated[str | None, typer.Option(help="Only events about this patient ID.")]
Analyzer = Annotated[str | None, typer.Option(help="Only events from this analyzer.")]
Event = Annotated[str | None, typer.Option(help="Only events of this type, e.g. result_delivered.")]
Since = Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no offset).")]
Until = Annotated[str | None, typer.Option(help="Up to this time (ISO 8601, UTC if no offset).")]
Site = Annotated[str | None, typer.Option(help="Only events of this site ([service] site), when sites share a database.")]


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _events(ctx: typer.Context, specimen: str | None, patient: str | None, analyzer: str | None,
            event: str | None, since: str | None, until: str | None, site: str | None = None) -> list[AuditEvent]:
    store = open_store(ctx)
    try:
        return store.audit_events(specimen=specimen, patient=patient, analyzer=analyzer, event=event,
                                  since=parse_time(since, "--since"), until=parse_time(until, "--until"),
                                  **({"site": site} if site is not None else {}))
    finally:
        store.close()


@audit_app.command("list")
def audit_list(ctx: typer.Context, specimen: Specimen = None, patient: Patient = None, analyzer: Analyzer = None,
               event: Event = None, since: Since = None, until: Until = None, site: Site = None,
               json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
               limit: Annotated[int | None, typer.Option(help="Only the first N matching events.")] = None,
               tail: Annotated[int | None, typer.Option(help="Only the last N matching events.")] = None) -> None:
    """List audit events, oldest first."""
    for option, value in (("--limit", limit), ("--tail", tail)):
        if value is not None and value < 1:
            raise UsageError(f"{option}: expected a number of events, 1 or more, got {value}")
    if limit is not None and tail is not None:
        raise UsageError("--limit and --tail: give one of them")
    events = _events(ctx, specimen, patient, analyzer, event, since, until, site)
    events = events[:limit] if limit is not None else events[-tail:] if tail is not None else events
    if json_:
        print_json([e.as_dict() for e in events])
        return
    print_table(("SEQ", "TIME", "EVENT", "ACTOR", "ANALYZER", "SPECIMEN", "REF"),
                [(e.seq, e.ts, e.event, e.actor, e.analyzer, e.specimen, e.ref) for e in events])


@audit_app.command("verify")
def audit_verify(ctx: typer.Context,
                 expect_head: Annotated[str | None, typer.Option(
                     "--expect-head", metavar="SEQ:HASH",
                     help="An anchor kept outside the database (from `labmw audit head` or the journal's"
                          " audit_head lines): fail unless that event is in the trail unchanged.")] = None) -> None:
    """Check the hash chain and every stored row it covers; exit 0 when intact, 1 naming the first problem."""
    anchor = None
    if expect_head is not None:
        try:
            anchor = parse_head(expect_head)
        except ValueError as exc:
            raise UsageError(f"--expect-head: {exc}") from None
    store = open_store(ctx)
    try:
        result = store.verify_audit(expect_head=anchor)
    finally:
        store.close()
    if result.ok:
        anchored = f", anchor {anchor[0]} matches" if anchor else ""
        typer.echo(f"audit trail intact: {result.count} events verified, {result.rows} stored rows match{anchored}")
        return
    where = f"event {result.first_broken}" if result.first_broken is not None else "the trail"
    typer.echo(f"audit trail BROKEN at {where}: {result.reason}", err=True)
    raise typer.Exit(1)


@audit_app.command("head")
def audit_head(ctx: typer.Context,
               json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """The newest event's sequence and hash (SEQ:HASH): keep it outside the database as an anchor."""
    store = open_store(ctx)
    try:
        seq, digest = store.audit_head()
    finally:
        store.close()
    if json_:
        print_json({"seq": seq, "hash": digest})
        return
    typer.echo(f"{seq}:{digest}")


@audit_app.command("export")
def audit_export(ctx: typer.Context,
                 format_: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
                 specimen: Specimen = None, patient: Patient = None, analyzer: Analyzer = None, event: Event = None,
                 since: Since = None, until: Until = None) -> None:
    """Write the selected events to stdout as JSON lines or CSV (with each event's hash)."""
    if format_ not in ("jsonl", "csv"):
        raise UsageError(f"--format: expected jsonl or csv, got {format_!r}")
    events = _events(ctx, specimen, patient, analyzer, event, since, until)
    if format_ == "jsonl":
        for e in events:
            typer.echo(json.dumps(e.as_dict(), ensure_ascii=False, sort_keys=True))
        return
    fields = ["seq", "ts", "event", "actor", "analyzer", "specimen", "patient", "ref", "data", "hash"]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields)
    writer.writeheader()
    for e in events:
        row: dict[str, Any] = e.as_dict()
        row["data"] = json.dumps(row["data"], ensure_ascii=False, sort_keys=True)
        writer.writerow(row)
