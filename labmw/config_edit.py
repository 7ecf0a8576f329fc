"""Edits of the configuration file made by the CLI: comments kept, validated before written, audited.

Each edit loads the file with tomlkit (which keeps comments and layout), changes one thing,
validates the whole result with :func:`labmw.config.parse`, writes it atomically, and appends a
``config_changed`` audit event naming the OS user with the before and after values. If the audit
event cannot be written, the file is put back: a change nobody can trace must not stand.
"""

from __future__ import annotations

import getpass
import os
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table
from tomlkit.toml_document import TOMLDocument

from labmw.config import Settings, parse, read_toml, rules_version
from labmw.errors import ConfigError, LabmwError, UsageError
from labmw.store.engines import open_store


def os_user() -> str:
    """The OS user making a change (the audit trail's actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def shipped_library() -> str:
    """The shipped method library (TOML text with a source comment beside every number)."""
    return resources.files("labmw").joinpath("data/methods.toml").read_text(encoding="utf-8")


def clinical_reference() -> str:
    """Where the installed package keeps CLINICAL.md, the document the method library's comments cite."""
    return str(resources.files("labmw").joinpath("data/CLINICAL.md"))


def initial_text(data_dir: str, *, store_url: str = "", site: str = "") -> str:
    """The text of a new configuration file: service section plus the shipped method library."""
    header = tomlkit.document()
    header.add(tomlkit.comment("labmw configuration. Edit with the `labmw` CLI (changes are audited);"))
    header.add(tomlkit.comment("`labmw config validate` checks a hand edit. Relative paths are relative to this file."))
    header.add(tomlkit.comment(f"\"CLINICAL.md\" below is labmw's reference document with the sources: {clinical_reference()}"))
    header.add(tomlkit.nl())
    service = tomlkit.table()
    service.add("data_dir", data_dir)
    service["data_dir"].comment("SQLite database and audit trail (created 0700/0600)")
    service.add("retention_years", 10)
    service["retention_years"].comment("audit retention; CLIA >= 2 y, HIPAA >= 6 y (refuses < 6)")
    if site:
        service.add("site", site)
        service["site"].comment("this site's name; sites sharing one PostgreSQL share patient history")
    header.add("service", service)
    if store_url:
        store = tomlkit.table()
        store.add("url", store_url)
        store["url"].comment("PostgreSQL holds the store (README: PostgreSQL); absent: SQLite in data_dir")
        header.add("store", store)
    return tomlkit.dumps(header) + "\n" + shipped_library() + shipped_qc() + shipped_review()


def shipped_qc() -> str:
    """The shipped ``[qc]`` defaults: interval and Westgard rule set, each with its source (labmw.qc)."""
    return resources.files("labmw").joinpath("data/qc.toml").read_text(encoding="utf-8")


def shipped_review() -> str:
    """The shipped ``[review]`` section: which held results need a second person (labmw.rules.second_person)."""
    return resources.files("labmw").joinpath("data/review.toml").read_text(encoding="utf-8")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        _keep_access(tmp, path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _keep_access(tmp: str, path: Path) -> None:
    """Give the replacement the file's owner, group and mode; a new file gets its directory's group, 0640.

    The service reads the file as its own user through the group (``/etc/labmw`` is root:labmw 0750,
    see systemd/labmw.sysusers): an edit by root must not take that away, and nobody else may read it.
    """
    if path.exists():
        st = path.stat()
        mode, uid, gid = st.st_mode & 0o777, st.st_uid, st.st_gid
    else:
        mode, uid, gid = 0o640, -1, path.parent.stat().st_gid
    try:
        os.chown(tmp, uid, gid)
    except PermissionError:
        pass  # not root and not a member of that group: the file stays the editor's own
    os.chmod(tmp, mode)


def init_config(path: Path, *, data_dir: str, force: bool, store_url: str = "", site: str = "",
                store_admin_url: str = "") -> Settings:
    """Write a new config at ``path`` and create its data directory and database; audited.

    With ``store_url`` the database is PostgreSQL; the schema is created through ``store_admin_url``
    (the schema owner) when given, so the URL written to the file can be the service's own role.
    """
    if path.is_dir():
        raise UsageError(f"{path} is a directory: --config names the file to write, e.g. {path / 'labmw.toml'}")
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    old_text = path.read_text(encoding="utf-8") if path.exists() else None
    text = initial_text(data_dir, store_url=store_url, site=site)
    settings = parse(tomlkit.parse(text).unwrap(), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, text)
    try:
        store = open_store(store_admin_url or settings.store_target, site=settings.site)
        try:
            store.append_audit("config_created", now=datetime.now(UTC), actor=os_user(),
                               data={"file": str(path.resolve()), "command": "init", "replaced": old_text is not None,
                                     "methods": sorted(settings.methods)})
        finally:
            store.close()
    except LabmwError:
        if old_text is None:
            path.unlink()
        else:
            _write_atomic(path, old_text)
        raise
    return settings


def edit(path: Path, command: str, key: str, change: Callable[[TOMLDocument], None]) -> Settings:
    """Apply ``change`` to the document at ``path``, validate, write, audit. Returns the new settings.

    Raises:
        ConfigError: the file is invalid before or after the change (nothing written).
        UsageError: the change itself refused (nothing written).
        StoreError: the audit event could not be written (the file is restored).
    """
    read_toml(path)  # a clear error for a missing or unparseable file
    old_text = path.read_text(encoding="utf-8")
    doc = tomlkit.parse(old_text)
    plain = doc.unwrap()  # a deep copy: taken once per side of the change
    # The file as it stands must be valid before anything is changed (Decimal: numbers as typed).
    before_settings = parse(tomllib.loads(old_text, parse_float=Decimal), path)
    before = _lookup(plain, key)
    change(doc)
    new_text = tomlkit.dumps(doc)
    plain = tomlkit.parse(new_text).unwrap()  # what will be written, read back
    after_settings = parse(tomllib.loads(new_text, parse_float=Decimal), path)
    after = _lookup(plain, key)
    store = open_store(after_settings.store_target, site=after_settings.site)
    try:
        _write_atomic(path, new_text)
        try:
            store.append_audit("config_changed", now=datetime.now(UTC), actor=os_user(),
                               data={"file": str(path.resolve()), "command": command, "key": key,
                                     "before": before, "after": after})
            # A change of the rules in force is its own event, with both versions (#11 item 6).
            with store.transaction(datetime.now(UTC)) as tx:
                tx.note_rules_version(rules_version(after_settings), actor=os_user(), how=f"{command} {key}",
                                      before=rules_version(before_settings))
        except LabmwError:
            _write_atomic(path, old_text)
            raise
    finally:
        store.close()
    return after_settings


def _lookup(doc: dict[str, Any], dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def new_table(items: Mapping[str, Any]) -> Table:
    """A TOML table holding ``items`` (nested mappings become sub-tables)."""
    table = tomlkit.table()
    for key, value in items.items():
        table[key] = new_table(value) if isinstance(value, Mapping) else value
    return table


def table_at(doc: TOMLDocument, *parts: str, create: bool = True) -> Table:
    """The (super-)table at ``parts``, created as needed; e.g. ("analyzers", "c501")."""
    node: Any = doc
    for i, part in enumerate(parts):
        if part not in node:
            if not create:
                raise UsageError(f"no {'.'.join(parts[: i + 1])} in the configuration")
            # [analyzers] and [methods] only hold named sub-tables: no bare header for them.
            new = tomlkit.table(is_super_table=i == 0 and part in ("analyzers", "methods"))
            node.add(part, new)
        node = node[part]
        if not isinstance(node, Table):
            raise ConfigError("configuration", ".".join(parts[: i + 1]), "expected a table")
    if not isinstance(node, Table):  # no parts: the document itself is not a Table
        raise UsageError("table_at: expected at least one table name")
    return node
