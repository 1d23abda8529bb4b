"""The unrolled-system interface and the checks that make bad input fail early.

A system is anything with three attributes (``System`` is the reference type):

* ``init(theta, key) -> state`` starts one episode (``state`` is any pytree);
* ``step(theta, state, t) -> (state, loss)`` advances one step, ``t`` is the
  int32 index of the step inside the episode, ``0 <= t < horizon``;
* ``horizon``: the episode length ``T`` (a Python int).

The objective is the mean per-step loss of an episode,
``L(theta) = E_key[(1/T) sum_t loss_t]``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp

PyTree = Any


class System(NamedTuple):
    """An unrolled computation: ``init(theta, key) -> state``,
    ``step(theta, state, t) -> (state, loss)`` and the episode length ``horizon``."""

    init: Callable[[PyTree, jax.Array], PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
    horizon: int


def check_system(system: Any, name: str = "system") -> None:
    """Checks the parts of a system that can be checked without theta (construction time)."""
    for attr in ("init", "step", "horizon"):
        if not hasattr(system, attr):
            raise TypeError(
                f"`{name}` has no attribute `{attr}` (got {type(system).__name__}); "
                "build it with unroll.System(init=..., step=..., horizon=...)."
            )
    for attr in ("init", "step"):
        if not callable(getattr(system, attr)):
            raise TypeError(
                f"`{name}.{attr}` must be a function, got {type(getattr(system, attr)).__name__}; "
                f"pass a pure function as unroll.System({attr}=...)."
            )
    horizon = system.horizon
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ValueError(
            f"`{name}.horizon` must be a positive Python int (the episode length), got {horizon!r}; "
            "pass e.g. unroll.System(..., horizon=100)."
        )


def check_positive_int(value: Any, name: str, fix: str = "") -> int:
    """Returns ``value`` as an int if it is a positive integer, else raises naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}. {fix}".rstrip())
    return int(value)


def check_truncation(truncation: Any, horizon: int) -> int:
    """A window length ``1 <= truncation <= horizon``."""
    truncation = check_positive_int(
        truncation, "truncation", "It is the number of steps per window: use 1 <= truncation <= horizon."
    )
    if truncation > horizon:
        raise ValueError(
            f"`truncation`={truncation} is longer than the episode (`horizon`={horizon}); "
            f"use truncation <= {horizon}, or full_bptt / es for whole episodes."
        )
    return truncation


def check_sigma(sigma: Any) -> float:
    """The standard deviation of ES perturbations: a positive finite float."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"`sigma` must be a positive float, got {sigma!r}; try sigma=0.1.") from None
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"`sigma` must be a positive finite float, got {sigma!r}; try sigma=0.1.")
    return value


def check_particles(num_particles: Any, antithetic: bool, name: str = "num_particles") -> int:
    """A particle count; even when particles come in antithetic pairs."""
    num_particles = check_positive_int(num_particles, name, "It counts perturbed copies per worker.")
    if antithetic and num_particles % 2:
        raise ValueError(
            f"`{name}`={num_particles} is odd but `antithetic=True` uses pairs (+eps, -eps); "
            f"use an even number such as {num_particles + 1}, or antithetic=False."
        )
    return num_particles


def _path_str(path) -> str:
    return "theta" + jax.tree_util.keystr(path) if path else "theta"


def check_theta(theta: PyTree) -> None:
    """Every leaf of theta must be a real floating-point array (or Python float)."""
    leaves = jax.tree_util.tree_leaves_with_path(theta)
    if not leaves:
        raise ValueError("`theta` has no array leaves; pass the outer parameters as a pytree of float arrays.")
    for path, leaf in leaves:
        if isinstance(leaf, bool) or not hasattr(leaf, "dtype") and not isinstance(leaf, (float, int)):
            raise TypeError(
                f"`{_path_str(path)}` is a {type(leaf).__name__}, not a float array; "
                "theta must be a pytree of float arrays, e.g. jnp.asarray(x, jnp.float32)."
            )
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`{_path_str(path)}` has dtype {dtype}, but theta leaves must be real float arrays; "
                "convert it with jnp.asarray(x, jnp.float32) (or float64)."
            )


def check_against_theta(system: Any, theta: PyTree, key: jax.Array) -> None:
    """Trace-time checks of ``init`` and ``step`` on the given theta (no FLOPs spent).

    Raises if ``step`` changes the state's structure, shapes or dtypes, or returns a
    loss that is not a float scalar.
    """
    check_theta(theta)
    state = jax.eval_shape(system.init, theta, key)
    t = jax.ShapeDtypeStruct((), jnp.int32)
    try:
        out = jax.eval_shape(system.step, theta, state, t)
    except TypeError as err:
        raise TypeError(f"`system.step(theta, state, t)` failed on the state from `system.init`: {err}") from err
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "`system.step` must return a pair (state, loss), got "
            f"{type(out).__name__}; return `new_state, loss`."
        )
    new_state, loss = out
    if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(state):
        raise TypeError(
            "`system.step` returned a state whose pytree structure differs from `system.init`'s: "
            f"{jax.tree_util.tree_structure(new_state)} vs {jax.tree_util.tree_structure(state)}; "
            "return the same structure every step."
        )
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(new_state)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise TypeError(
                f"`system.step` changed state{jax.tree_util.keystr(path)} from {a.dtype}{list(a.shape)} "
                f"to {b.dtype}{list(b.shape)}; each state leaf must keep its shape and dtype "
                "(cast with .astype and check broadcasting)."
            )
    if not hasattr(loss, "shape") or loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        desc = f"{getattr(loss, 'dtype', type(loss).__name__)}{list(getattr(loss, 'shape', []))}"
        raise TypeError(
            f"`system.step` must return a float scalar loss, got {desc}; "
            "reduce it with .mean() or .sum() and make sure it is floating point."
        )


def _is_inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def inexact_leaves(state) -> list:
    """The float/complex leaves of a state, the ones that carry tangents (keys, counters do not)."""
    return [x for x in jax.tree_util.tree_leaves(state) if _is_inexact(x)]


def with_inexact_leaves(state, values: list):
    """``state`` with its inexact leaves replaced, in order, by ``values``."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    values = iter(values)
    return jax.tree_util.tree_unflatten(treedef, [next(values) if _is_inexact(x) else x for x in leaves])


def real_parts(leaves: list) -> list:
    """Complex leaves as stacked (real, imaginary) parts: the influence lives on the real
    view of the state, so non-holomorphic steps are differentiated correctly."""
    return [jnp.stack([jnp.real(x), jnp.imag(x)]) if jnp.iscomplexobj(x) else x for x in leaves]


def from_real_parts(parts: list, template: list) -> list:
    return [p[0] + 1j * p[1] if jnp.iscomplexobj(x) else p for p, x in zip(parts, template)]


def real_view(system, state):
    """``(vector, f)``: the state's inexact leaves as one real vector ``[N]``, and
    ``f(theta, vector, t) -> (next vector, loss, next state)``, the step on that view."""
    template = inexact_leaves(state)
    vector, unravel = ravel_pytree(real_parts(template))

    def f(theta, vector, t):
        new_state, loss = system.step(theta, with_inexact_leaves(state, from_real_parts(unravel(vector), template)), t)
        return ravel_pytree(real_parts(inexact_leaves(new_state)))[0], loss, new_state

    return vector, f
