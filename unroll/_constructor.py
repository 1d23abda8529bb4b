"""What every estimator constructor shares: keyword-only arguments, the window checks."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from unroll._errors import BadType
from unroll._system import check_num_workers, check_system, check_truncation


def keyword_only(constructor: Callable) -> Callable:
    """``constructor(system, *, ...)`` whose positional call fails at once with a
    TypeError that names the arguments to write (interface.md, section 2)."""
    names = [p.name for p in inspect.signature(constructor).parameters.values() if p.kind is p.KEYWORD_ONLY]

    @functools.wraps(constructor)
    def build(*args, **kwargs):
        if len(args) > 1:
            extra = args[1:]
            named = ", ".join(f"{name}={_short(value)}" for name, value in zip(names, extra))
            raise BadType(
                f"`{constructor.__name__}` takes `system` and then keyword arguments only, got {len(extra)} more "
                f"positional argument(s); name the argument(s): {constructor.__name__}(system, {named})."
            )
        return constructor(*args, **kwargs)

    return build


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else "..."


def check_window(system: Any, truncation: Any, num_workers: Any) -> tuple[int, int]:
    """The construction-time checks every windowed estimator shares: the system, and the
    checked ``(truncation, num_workers)``."""
    check_system(system)
    return check_truncation(truncation, system.horizon), check_num_workers(num_workers)
