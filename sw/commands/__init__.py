"""Subcommands of the ``vitaccel`` command line, one module each.

Each module defines ``register(subparsers)``, which adds its parser and sets
``func=handler`` on it; ``handler(args) -> int`` returns the exit code. Errors a user can
fix (bad config, unsupported operator, missing file) are raised as :class:`UserError` and
printed as one line, never as a traceback.
"""

COMMAND_MODULES = (
    "spec",
    "demo",
    "bench",
    "train",
    "compile",
    "run",
    "regress",
    "emit",
    "dse",
)


class UserError(Exception):
    """An error caused by the user's input; the CLI prints its message and exits 2."""
