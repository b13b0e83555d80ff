"""The UI's promote and roll back, for both kinds of model.

A model served from the registry (`registry://NAME@ALIAS`) follows its aliases: the server's
watcher reloads whatever they name, so promoting there moves the alias and clears the canary
alias (one version serves, and a later `loopserve registry rollback` of the main alias serves
the version it goes back to alone), exactly as the pipeline's promote step does, and is kept in
the alias history. A model from the repository directory is routed here: the router promotes
or rolls back at once.
"""

from __future__ import annotations

import msgspec

from loopserve.errors import InvalidInput

ACTOR = "loopserve ui"


def registry_target(repository, name: str) -> tuple[str, str, str | None]:
    """(registered model, main alias, canary alias) of a registry-sourced model."""
    source = repository.registry.sources[name]
    registered, ref = source.registry_ref
    if isinstance(ref, int):
        raise InvalidInput(f"model '{name}' serves registry version {ref} pinned by its source {source.source!r}: "
                           "there is no alias to move; change the server config")
    return registered, ref, source.canary_alias


def promote_in_registry(store_root, registered: str, alias: str, canary: str | None, version: int) -> list[dict]:
    from loopserve.registry import clear_alias, set_alias
    from loopserve.store import Store

    with Store(store_root) as store:
        events = [set_alias(registered, alias, version, reason="promoted from the UI", actor=ACTOR, store=store)]
        if canary:
            events.append(clear_alias(registered, canary, reason="promoted from the UI", actor=ACTOR, store=store))
    return [msgspec.structs.asdict(e) for e in events if e is not None]


def roll_back_in_registry(store_root, registered: str, alias: str, canary: str | None) -> list[dict]:
    """A canary that differs from the main alias is ended (cleared); otherwise the main alias goes
    back one move (and a canary on it is cleared)."""
    from loopserve.registry import clear_alias, current_version, rollback
    from loopserve.registry.errors import RegistryError, UnknownAlias
    from loopserve.store import Store

    with Store(store_root) as store:
        main = current_version(registered, alias, store=store)
        try:
            canary_version = current_version(registered, canary, store=store) if canary else None
        except UnknownAlias:
            canary_version = None
        events = []
        if canary_version is None or canary_version == main:
            try:
                events.append(rollback(registered, alias, reason="rolled back from the UI", actor=ACTOR, store=store))
            except RegistryError as e:
                raise InvalidInput(str(e)) from None
        if canary_version is not None:
            events.append(clear_alias(registered, canary, reason="rolled back from the UI", actor=ACTOR, store=store))
    return [msgspec.structs.asdict(e) for e in events if e is not None]
