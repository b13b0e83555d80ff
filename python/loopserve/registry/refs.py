"""References to a model version: a number, an alias, or `latest`; `NAME@REF` strings and URIs."""

from __future__ import annotations

from loopserve.registry.errors import RegistryError, UnknownAlias, UnknownModel, UnknownVersion
from loopserve.store import validate_name
from loopserve.store.db import Database

URI_SCHEME = "registry://"
LATEST = "latest"


def parse_ref(text: str, default: str | int | None = None) -> tuple[str, str | int | None]:
    """Split `NAME@REF` (optionally `registry://NAME@REF`) into the name and the reference.

    REF is a version number (returned as int) or an alias; without `@`, `default` is returned.
    """
    if not isinstance(text, str):
        raise RegistryError(f"invalid model reference {text!r}: expected 'NAME', 'NAME@VERSION' or 'NAME@ALIAS'")
    body = text[len(URI_SCHEME):] if text.startswith(URI_SCHEME) else text
    name, sep, ref = body.partition("@")
    validate_name("model", name)
    if not sep:
        return name, default
    return name, normalize_ref(ref)


def normalize_ref(ref: str | int) -> str | int:
    """A version number as int, an alias as a validated name."""
    if isinstance(ref, bool):
        raise RegistryError(f"invalid version reference {ref!r}: expected a version number or an alias")
    if isinstance(ref, int):
        if ref < 1:
            raise RegistryError(f"invalid version {ref}: versions are numbered from 1")
        return ref
    if isinstance(ref, str) and ref.isdigit():
        return normalize_ref(int(ref))
    return validate_name("alias", ref)


def check_model(db: Database, name: str) -> None:
    validate_name("model", name)
    if db.execute("SELECT 1 FROM registry_models WHERE name=?", (name,)).fetchone() is None:
        raise UnknownModel(f"no registered model named {name!r} (`loopserve registry list` shows the models)")


def resolve_version(db: Database, name: str, ref: str | int) -> int:
    """The version number `ref` stands for now. One or two indexed lookups: cheap enough to poll."""
    ref = normalize_ref(ref)
    if isinstance(ref, int):
        if db.execute("SELECT 1 FROM registry_versions WHERE name=? AND version=?", (name, ref)).fetchone():
            return ref
        check_model(db, name)
        (last,) = db.execute("SELECT MAX(version) FROM registry_versions WHERE name=?", (name,)).fetchone()
        raise UnknownVersion(f"model {name!r} has no version {ref} (its versions are 1 to {last})")
    row = db.execute("SELECT version FROM registry_aliases WHERE name=? AND alias=?", (name, ref)).fetchone()
    if row is not None:
        return row[0]
    if ref == LATEST:
        row = db.execute("SELECT MAX(version) FROM registry_versions WHERE name=?", (name,)).fetchone()
        if row[0] is not None:
            return row[0]
    check_model(db, name)
    aliases = [a for (a,) in db.execute("SELECT alias FROM registry_aliases WHERE name=? ORDER BY alias", (name,))]
    raise UnknownAlias(f"model {name!r} has no alias {ref!r}; expected a version number, 'latest' or one of its "
                       f"aliases: {', '.join(aliases) if aliases else '(none set)'}")
