"""The model registry: versions with lineage, aliases with full history, verified artifacts.

    from loopserve.registry import register_model, set_alias, materialize
    v = register_model("fraud", "out/model_dir", run_id=run.id, metrics={"auc": 0.93})
    set_alias("fraud", "production", v.version, reason="beat v3 on the holdout")
    path = materialize("fraud", "production")       # a directory, every file sha256-checked

Metadata lives in the store's SQLite database (tables `registry_*`); artifacts in its
content-addressed blob store. Version numbers are allocated inside one BEGIN IMMEDIATE
transaction, so concurrent writers (threads or processes) never collide.
"""

from loopserve.registry.aliases import AliasConflict, alias_at, alias_history, clear_alias, rollback, set_alias
from loopserve.registry.errors import (RegistryError, ReproductionRefused, UnknownAlias, UnknownModel,
                                       UnknownVersion)
from loopserve.registry.materialize import materialize
from loopserve.registry.query import (current_version, get_version, lineage, list_models, list_versions,
                                      set_version_metric, set_version_tag)
from loopserve.registry.records import AliasEvent, ArtifactFile, Lineage, ModelSummary, ModelVersion
from loopserve.registry.refs import parse_ref
from loopserve.registry.register import register_model
from loopserve.registry.reproduce import Reproduction, reproduce

__all__ = ["AliasConflict", "AliasEvent", "ArtifactFile", "Lineage", "ModelSummary", "ModelVersion", "RegistryError",
           "Reproduction", "ReproductionRefused", "UnknownAlias", "UnknownModel", "UnknownVersion", "alias_at",
           "alias_history", "clear_alias", "current_version", "get_version", "lineage", "list_models", "list_versions",
           "materialize", "parse_ref", "register_model", "reproduce", "rollback", "set_alias",
           "set_version_metric", "set_version_tag"]
