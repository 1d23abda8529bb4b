"""The errors of unroll's own input checks.

`BadValue` and `BadType` are a `ValueError` and a `TypeError` (catch those), raised at
construction or trace time with a message that names the argument, the value and the
fix. The CLI prints them as one line with exit code 2 (`UsageError`); any other
exception, raised in the user's code, by JAX or by a bug of ours, keeps its traceback.
"""


class UsageError(Exception):
    """Marks an error of unroll's own input checks (a usage error to the CLI)."""


class BadValue(UsageError, ValueError):
    """A value that unroll's checks refuse (`truncation <= 0`, an odd antithetic `num_particles`, ...)."""


class BadType(UsageError, TypeError):
    """A type that unroll's checks refuse (a positional option, a non-float `theta` leaf, ...)."""


class MissingExtra(UsageError, ImportError):
    """An optional dependency that is not installed; the message names the extra to install."""
