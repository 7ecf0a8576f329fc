"""`labmw review list|release|reject`: results a rule held back, and the decisions on them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from labmw.cli.common import open_store, print_json, print_table, settings
from labmw.config_edit import os_user
from labmw.daemon import review

review_app = typer.Typer(no_args_is_help=True, help="Held results: list, release (forwards) or reject.")
Reason = Annotated[str, typer.Option(help="Why (recorded in the audit trail with your OS user).")]


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


@review_app.command("list")
def review_list(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Results waiting for a decision, oldest first."""
    store = open_store(ctx)
    try:
        held = store.held_results()
        # A two-person release waiting for its second signature (labmw.daemon.review).
        first = {h.id: s.first_actor for h in held
                 if (s := store.release_signature(h.id)) is not None and s.outcome == "pending"}
    finally:
        store.close()
    if json_:
        print_json([{**h.as_dict(), "release_requested_by": first.get(h.id)} for h in held])
        return
    print_table(("ID", "ANALYZER", "SPECIMEN", "PATIENT", "METHOD", "VALUE", "GATES", "HELD SINCE", "REASON"),
                [(h.id, h.analyzer, h.specimen, h.patient, h.method, f"{h.value} {h.units}".strip(),
                  ", ".join(h.gates) or "-", h.held_at or "-",
                  (f"AWAITING A SECOND PERSON (release requested by {first[h.id]}); " if h.id in first else "")
                  + ("CORRECTION of a delivered result; " if h.correction else "") + h.reason)
                 for h in held])


def _decide(ctx: typer.Context, result_id: int, decision: str, reason: str) -> review.Decided:
    cfg = settings(ctx)
    store = open_store(ctx, cfg)
    try:
        return review.decide(cfg, store, result_id, decision=decision, reason=reason, actor=os_user(),
                             now=datetime.now(UTC))
    finally:
        store.close()


@review_app.command("release")
def review_release(ctx: typer.Context, result_id: Annotated[int, typer.Argument(metavar="ID")], reason: Reason) -> None:
    """Release a held result: it is forwarded to the LIS (a second person's release where [review] asks one)."""
    typer.echo(f"result {result_id} {_decide(ctx, result_id, 'release', reason).message}")


@review_app.command("reject")
def review_reject(ctx: typer.Context, result_id: Annotated[int, typer.Argument(metavar="ID")], reason: Reason) -> None:
    """Reject a held result: it is never forwarded."""
    _decide(ctx, result_id, "reject", reason)
    typer.echo(f"result {result_id} rejected")
