"""Errors of the registry area."""

from loopserve.errors import LoopserveError, ModelNotFound


class RegistryError(LoopserveError):
    """A registry call was given something it cannot do."""


class UnknownModel(ModelNotFound):
    """No registered model has this name."""


class UnknownVersion(ModelNotFound):
    """The model has no such version."""


class UnknownAlias(ModelNotFound):
    """The model has no such alias (now, or ever for history queries)."""


class ReproductionRefused(RegistryError):
    """The code version differs from the recorded one (or the tree is dirty) and --force was not given."""
