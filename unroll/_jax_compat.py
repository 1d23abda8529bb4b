"""The one place unroll reaches into JAX's internals, behind a fallback.

Supported JAX: the range `pyproject.toml` declares (`jax>=0.4.30,<0.11`). No public JAX
API finds which inputs of a jaxpr its outputs read, so `used_inputs` asks
`jax._src.interpreters.partial_eval.dce_jaxpr` (exact: it looks inside scans, conds and
nested jaxprs); where a JAX version moved or changed it, `used_inputs` falls back to a
liveness pass over the jaxpr's equations that is conservative (an equation's outputs are
taken to read all its inputs, so it may report an input as read that is not, never the
reverse).
"""

from __future__ import annotations

import jax

SUPPORTED_JAX = ">=0.4.30,<0.11"


def _internal_dce():
    """JAX's own dead-code elimination, or None where this JAX has none where we look."""
    try:
        from jax._src.interpreters import partial_eval
    except ImportError:
        return None
    return getattr(partial_eval, "dce_jaxpr", None)


def _is_literal(atom) -> bool:
    return type(atom).__name__ == "Literal"  # a constant, not a variable (jax.extend.core.Literal)


def liveness(jaxpr) -> list[bool]:
    """Conservative `used_inputs`: a backward pass over the equations, each of which reads
    all its inputs once any of its outputs is needed."""
    live = {v for v in jaxpr.outvars if not _is_literal(v)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if not _is_literal(v))
    return [v in live for v in jaxpr.invars]


def used_inputs(closed_jaxpr, dce=None) -> list[bool]:
    """For each input of `closed_jaxpr`, whether any of its outputs depends on it.

    Args:
        closed_jaxpr: a `jax.make_jaxpr(...)` result.
        dce: JAX's `dce_jaxpr` (found in JAX's internals when None); `False` forces the
            conservative fallback.

    Returns:
        One bool per input, in order.

    Raises:
        RuntimeError: JAX's function exists but no longer keeps the contract used here
            (names the JAX version and the supported range).
    """
    jaxpr = closed_jaxpr.jaxpr
    dce = _internal_dce() if dce is None else dce
    if not dce:
        return liveness(jaxpr)
    try:
        _, used = dce(jaxpr, [True] * len(jaxpr.outvars))
        used = [bool(u) for u in used]
    except Exception as err:  # a changed signature or return type in a newer JAX
        raise RuntimeError(
            f"jax {jax.__version__}: jax._src.interpreters.partial_eval.dce_jaxpr no longer works as unroll uses it "
            f"({type(err).__name__}: {err}); unroll supports jax{SUPPORTED_JAX}: install a jax in that range "
            f"(pip install 'jax{SUPPORTED_JAX}') or report it."
        ) from err
    if len(used) != len(jaxpr.invars):
        raise RuntimeError(
            f"jax {jax.__version__}: dce_jaxpr returned {len(used)} flags for {len(jaxpr.invars)} inputs; unroll "
            f"supports jax{SUPPORTED_JAX}."
        )
    return used
