"""Subcommands of the `loopserve` CLI, one module per area.

Each module defines `register(subparsers)`, which adds its parser(s) and sets
`handler=<function(args) -> int>` as a default; `loopserve.cli` calls them in order.
"""

# Modules listed here are imported lazily by the CLI so that `loopserve serve` does not pay
# for the imports of training or the store.
COMMAND_MODULES = (
    "loopserve.commands.data",
    "loopserve.commands.runs",
    "loopserve.commands.registry",
    "loopserve.commands.reproduce",
    "loopserve.commands.train",
    "loopserve.commands.pipeline",
    "loopserve.commands.drift",
)
