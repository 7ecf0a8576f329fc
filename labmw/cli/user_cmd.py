"""`labmw user add|disable|list`: accounts of the review workstation (`labmw web`)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from labmw.cli.common import open_store, print_json, print_table
from labmw.config_edit import os_user
from labmw.errors import UsageError

user_app = typer.Typer(no_args_is_help=True, help="Review-workstation accounts: add, disable, list.")


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        # One line; the newline that ends it is not part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Repeat the password", hide_input=True) != first:
        raise UsageError("the two passwords differ; nothing changed")
    return str(first)


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name (letters, digits, '.', '_', '-').")],
    role: Annotated[str, typer.Option(help="reviewer, director, auditor or admin.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin",
                                                 help="Read the password from the first line of stdin.")] = False,
) -> None:
    """Add an account (the password is prompted for, or read with --password-stdin); audited with your OS user."""
    from labmw.web.accounts import add_user, check_name, check_role

    check_name(name), check_role(role)
    password = _password(password_stdin)
    store = open_store(ctx)
    try:
        add_user(store, name=name, role=role, password=password, actor=os_user(), now=datetime.now(UTC))
    finally:
        store.close()
    typer.echo(f"user {name} added as {role}")


@user_app.command("disable")
def user_disable(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Login name.")]) -> None:
    """Disable an account: it can no longer log in, and its open sessions end at once."""
    store = open_store(ctx)
    try:
        store.users.set_enabled(name, enabled=False, actor=os_user(), now=datetime.now(UTC))
    finally:
        store.close()
    typer.echo(f"user {name} disabled")


@user_app.command("list")
def user_list(ctx: typer.Context, json_: Annotated[bool, typer.Option("--json", help="JSON output.")] = False) -> None:
    """Accounts with their role and whether they are enabled (never their password hashes)."""
    store = open_store(ctx)
    try:
        users = store.users.all()
    finally:
        store.close()
    if json_:
        print_json([u.as_dict() for u in users])
        return
    print_table(("NAME", "ROLE", "ENABLED", "CREATED"),
                [(u.name, u.role, "yes" if u.enabled else "no", u.created_at) for u in users])
