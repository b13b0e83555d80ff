"""Aliases (`production`, `staging`, any name): atomic moves, kept forever as history.

Every move appends a row to `registry_alias_history` in the same transaction that moves the
alias, so the history answers which version held an alias at any past moment. Times in one
alias's history never go backwards (a clock stepping back is clamped to the previous row's
time), so "the last move at or before T" is well defined. Clearing an alias (`clear_alias`) is
a move too: a `delete` row whose `version` is the version the alias left.

`expect` makes a move compare-and-set: it happens only if the alias names that version now
(None: is unset), else AliasConflict, so a writer that decided on what it read earlier (the
pipeline promoting the version it compared against production) never overwrites a move made
meanwhile.
"""

from __future__ import annotations

import getpass

from loopserve.registry.errors import RegistryError, UnknownAlias
from loopserve.registry.records import AliasEvent
from loopserve.registry.refs import check_model, resolve_version
from loopserve.registry.schema import opened, registry_scope
from loopserve.store import Store, transaction, validate_name
from loopserve.store.db import Database
from loopserve.tracking.times import now, parse_time


def default_actor() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


class AliasConflict(RegistryError):
    """A compare-and-set move found the alias naming another version than expected."""


_ANY = object()  # `expect` left out: move whatever the alias names now


def current_target(db: Database, name: str, alias: str) -> int | None:
    row = db.execute("SELECT version FROM registry_aliases WHERE name=? AND alias=?", (name, alias)).fetchone()
    return row[0] if row else None


def _check_expected(name: str, alias: str, previous: int | None, expect) -> None:
    if expect is not _ANY and previous != expect:
        def show(v):
            return "unset" if v is None else f"version {v}"
        raise AliasConflict(f"alias {alias!r} of model {name!r} is {show(previous)} now, not {show(expect)} as "
                            f"expected: it was moved meanwhile")


def _stamp(db: Database, name: str, alias: str) -> str:
    stamp = now()
    (last,) = db.execute("SELECT MAX(set_at) FROM registry_alias_history WHERE name=? AND alias=?",
                         (name, alias)).fetchone()
    return last if last is not None and last > stamp else stamp


def move_alias(db: Database, name: str, alias: str, version: int, action: str,
               actor: str | None, reason: str | None, expect=_ANY) -> AliasEvent | None:
    """Point `alias` at `version` and record it; call inside a write transaction in the model's
    `registry_scope`. None if it already did; AliasConflict if `expect` is given and the alias
    names another version (None: is unset)."""
    previous = current_target(db, name, alias)
    _check_expected(name, alias, previous, expect)
    if previous == version:
        return None
    stamp = _stamp(db, name, alias)
    db.execute("INSERT INTO registry_aliases (name, alias, version, set_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, set_at = excluded.set_at",
               (name, alias, version, stamp))
    db.execute("INSERT INTO registry_alias_history (name, alias, version, previous_version, action, set_at, actor, "
               "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (name, alias, version, previous, action, stamp, actor, reason))
    return AliasEvent(name, alias, version, previous, action, stamp, actor, reason)


def remove_alias(db: Database, name: str, alias: str, actor: str | None, reason: str | None,
                 expect=_ANY) -> AliasEvent | None:
    """Unset `alias` and record it (a `delete` row); call as move_alias. None if it was unset."""
    previous = current_target(db, name, alias)
    _check_expected(name, alias, previous, expect)
    if previous is None:
        return None
    stamp = _stamp(db, name, alias)
    db.execute("DELETE FROM registry_aliases WHERE name=? AND alias=?", (name, alias))
    db.execute("INSERT INTO registry_alias_history (name, alias, version, previous_version, action, set_at, actor, "
               "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (name, alias, previous, previous, "delete", stamp, actor, reason))
    return AliasEvent(name, alias, previous, previous, "delete", stamp, actor, reason)


def set_alias(name: str, alias: str, version: int | str, reason: str | None = None, actor: str | None = None,
              store: Store | None = None, expect=_ANY) -> AliasEvent | None:
    """Point `alias` of model `name` at `version` (a number, or another alias: its current version).

    Atomic, and recorded in the alias history with the previous version, the time, the actor
    (default: the OS user) and `reason`. Returns the event, or None if the alias already pointed there.
    `expect`: only if the alias names this version now (None: is unset), else AliasConflict.
    """
    validate_name("model", name)
    validate_name("alias", alias)
    with opened(store) as s, transaction(s.db, registry_scope(name)):
        target = resolve_version(s.db, name, version)
        return move_alias(s.db, name, alias, target, "set", actor or default_actor(), reason, expect)


def clear_alias(name: str, alias: str, reason: str | None = None, actor: str | None = None,
                store: Store | None = None, expect=_ANY) -> AliasEvent | None:
    """Unset `alias` of model `name`, recorded in its history as a `delete`; None if it was unset.
    `expect` as in set_alias."""
    validate_name("model", name)
    validate_name("alias", alias)
    with opened(store) as s, transaction(s.db, registry_scope(name)):
        check_model(s.db, name)
        return remove_alias(s.db, name, alias, actor or default_actor(), reason, expect)


def _rollback_target(events: list[tuple[str, int]]) -> int | None:
    # Each set pushes a version, each rollback pops one: rolling back twice goes two moves back.
    # A delete (the alias cleared) pushes nothing: rolling back later goes to the versions it held.
    stack: list[int] = []
    for action, version in events:
        if action == "delete":
            continue
        if action == "rollback":
            stack.pop()
        else:
            stack.append(version)
    return stack[-2] if len(stack) >= 2 else None


def rollback(name: str, alias: str = "production", reason: str | None = None, actor: str | None = None,
             store: Store | None = None) -> AliasEvent:
    """Move `alias` back to the version it held before its last move (again: one move further back)."""
    validate_name("model", name)
    validate_name("alias", alias)
    with opened(store) as s, transaction(s.db, registry_scope(name)):
        db = s.db
        check_model(db, name)
        events = db.execute("SELECT action, version FROM registry_alias_history WHERE name=? AND alias=? "
                            "ORDER BY seq", (name, alias)).fetchall()
        if not events:
            raise UnknownAlias(f"model {name!r} has no alias {alias!r} to roll back")
        if events[-1][0] == "delete":
            raise RegistryError(f"alias {alias!r} of model {name!r} is unset (cleared); point it at a version "
                                f"with `loopserve registry alias {name} {alias} VERSION`")
        target = _rollback_target([(a, v) for a, v in events])
        if target is None:
            raise RegistryError(f"alias {alias!r} of model {name!r} has no earlier version to roll back to "
                                f"(`loopserve registry history {name} --alias {alias}` shows its moves)")
        event = move_alias(db, name, alias, target, "rollback", actor or default_actor(), reason)
        assert event is not None  # the stack never holds the same version twice in a row
        return event


def alias_history(name: str, alias: str | None = None, store: Store | None = None) -> list[AliasEvent]:
    """Every move of the model's aliases (or of one alias), oldest first."""
    validate_name("model", name)
    with opened(store) as s:
        check_model(s.db, name)
        sql = ("SELECT name, alias, version, previous_version, action, set_at, actor, reason "
               "FROM registry_alias_history WHERE name=?")
        args: list = [name]
        if alias is not None:
            sql += " AND alias=?"
            args.append(validate_name("alias", alias))
        return [AliasEvent(*row) for row in s.db.execute(sql + " ORDER BY seq", args)]


def alias_at(name: str, alias: str, timestamp, store: Store | None = None) -> int | None:
    """The version `alias` pointed at at `timestamp` (datetime, ISO-8601 string or unix seconds;
    naive means UTC); None if the alias had not been set yet then."""
    validate_name("model", name)
    validate_name("alias", alias)
    moment = parse_time(timestamp)
    with opened(store) as s:
        db = s.db
        check_model(db, name)
        if db.execute("SELECT 1 FROM registry_alias_history WHERE name=? AND alias=? LIMIT 1",
                      (name, alias)).fetchone() is None:
            raise UnknownAlias(f"model {name!r} has never had an alias {alias!r}")
        row = db.execute("SELECT version, action FROM registry_alias_history WHERE name=? AND alias=? AND set_at <= ? "
                         "ORDER BY set_at DESC, seq DESC LIMIT 1", (name, alias, moment)).fetchone()
        return row[0] if row and row[1] != "delete" else None
