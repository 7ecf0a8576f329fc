"""`labmw audit list|verify|export`: the trail, for reviewers and auditors."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated, Any

import typer

from labmw.cli.common import open_store, parse_time, print_json, print_table
from labmw.errors import UsageError
from labmw.store.audit import AuditEvent

audit_app = typer.Typer(no_args_is_help=True, help="Review, verify and export the audit trail.")

Specimen = Annotated[str | None, typer.Option(help="Only events about this specimen ID.")]
Patient = Annotated[str | None, typer.Option(help="Only events about this patient ID.")]
Analyzer = Annotated[str | None, typer.Option(help="Only events from this analyzer.")]
Event = Annotated[str | None, typer.Option(help="Only events of this type, e.g. result_delivered.")]
Since = Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no offset).")]
Until = Annotated[str | None, typer.Option(help="Up to this time (ISO 8601, UTC if no offset).")]


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def _events(ctx: typer.Context, specimen: str | None, patient: str | None, analyzer: str | None,
            event: str | None, since: str | None, until: str | None) -> list[AuditEvent]:
    store = open_store(ctx)
    try:
        return store.audit_events(specimen=specimen, patient=patient, analyzer=analyzer, event=event,
                                  since=parse_time(since, "--since"), until=parse_time(until, "--until"))
    finally:
        store.close()


@audit_app.command("list")
def audit_list(ctx: typer.Context, specimen: Specimen = None, patient: Patient = None, analyzer: Analyzer = None,
               event: Event = None, since: Since = None, until: Until = None,
               json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
               limit: Annotated[int | None, typer.Option(help="Only the first N matching events.")] = None,
               tail: Annotated[int | None, typer.Option(help="Only the last N matching events.")] = None) -> None:
    """List audit events, oldest first."""
    for option, value in (("--limit", limit), ("--tail", tail)):
        if value is not None and value < 1:
            raise UsageError(f"{option}: expected a number of events, 1 or more, got {value}")
    if limit is not None and tail is not None:
        raise UsageError("--limit and --tail: give one of them")
    events = _events(ctx, specimen, patient, analyzer, event, since, until)
    events = events[:limit] if limit is not None else events[-tail:] if tail is not None else events
    if json_:
        print_json([e.as_dict() for e in events])
        return
    print_table(("SEQ", "TIME", "EVENT", "ACTOR", "ANALYZER", "SPECIMEN", "REF"),
                [(e.seq, e.ts, e.event, e.actor, e.analyzer, e.specimen, e.ref) for e in events])


@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """Check the hash chain; exit 0 when intact, 1 naming the first broken event."""
    store = open_store(ctx)
    try:
        result = store.verify_audit()
    finally:
        store.close()
    if result.ok:
        typer.echo(f"audit trail intact: {result.count} events verified")
        return
    where = f"event {result.first_broken}" if result.first_broken is not None else "the trail"
    typer.echo(f"audit trail BROKEN at {where}: {result.reason}", err=True)
    raise typer.Exit(1)


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
