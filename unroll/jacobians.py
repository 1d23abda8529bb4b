r"""Structured step Jacobians: what Newton over time (DEER, quasi-DEER) needs of $\partial s' / \partial s$.

A Newton iteration over time linearizes every step, $J_t = \partial f(s_{t-1}, t) / \partial s$.
Formed by `jax.jacfwd` that costs $N$ jvps per step (the state's real view has $N$
coordinates), however cheap the step: quasi-DEER then pays for $N^2$ entries of which it
keeps the $N$ on the diagonal. A system (or a cell of `unroll.tasks.rnn`) that knows its
Jacobian's structure declares it as a `StepJacobian`: its diagonal $d$ and, optionally, its
off-diagonal part as a low-rank product or as dense rows,

$$
J = \mathrm{diag}(d) + \mathrm{offdiag}(L R^\top) \quad\text{or}\quad J = \mathrm{diag}(d) + \mathrm{offdiag}(L),
$$

each at about the cost of one step (e.g. a tanh RNN $h' = \tanh(W h + U x + b)$ has
$J = \mathrm{diag}(1 - h'^2)\, W$: $d = (1 - h'^2) \odot \mathrm{diag}(W)$, $L = \mathrm{diag}(1 - h'^2) W$).
Quasi-DEER reads only $d$ (what it does not read is never computed), DEER the dense $J$;
the adjoint's diagonal is the same, $\mathrm{diag}(J^\top) = \mathrm{diag}(J)$.

Without a declaration, `episode_jacobian` finds the structural sparsity pattern of $J$ once
at trace time (the one `rtrl` and `snap` use) and, for the diagonal solvers, forms the
diagonal from one jvp per colour of a Curtis-Powell-Reid colouring of the pattern's
columns: a single jvp with an all-ones probe where the step is elementwise, two for an
elementwise complex step (its real view is $2 \times 2$-block diagonal). Otherwise, and for
the dense solvers, `jax.jacfwd` as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll._errors import BadType, BadValue
from unroll._system import from_real_parts, real_parts, split_discrete
from unroll._tree import PyTree
from unroll.estimators._sparsity import state_coloring

__all__ = [
    "DIAGONAL_SOLVERS",
    "StepJacobian",
    "episode_jacobian",
    "jacobian_diagonal",
    "view_jacobian",
]

DIAGONAL_SOLVERS = ("quasi-deer", "quasi-elk")
"""The Newton solvers that keep only $\\mathrm{diag}(J_t)$; the others use the dense $J_t$."""


class StepJacobian(NamedTuple):
    r"""$J = \partial s' / \partial s$ of one step on the state's float leaves: its diagonal, and its off-diagonal part.

    Returned by a system's `jacobian(theta, state, t)` (of `step(theta, state, t)[0]`) or a
    cell's `jacobian(params, state, x)` (of `apply(params, state, x)`). On the state's real
    view (`view_jacobian`: float leaves raveled in order, a complex leaf as its real then its
    imaginary parts; int and key leaves are not in it and their entries here are ignored, any
    value or `None`),

    $$
    J_{ii} = d_i, \qquad J_{ij} = \textstyle\sum_r L_{ir} R_{jr} \ \text{(or } L_{ij} \text{ without } R\text{)},\ i \ne j.
    $$

    Attributes:
      diagonal: $d$, state-shaped: per element, the derivative of its next value by itself. On a complex leaf
        the complex derivative $\lambda$ of an elementwise holomorphic step $z' = \lambda z + \dots$: its real
        view is the $2 \times 2$ block $\begin{pmatrix} \Re\lambda & -\Im\lambda \\ \Im\lambda & \Re\lambda
        \end{pmatrix}$ on $(\Re z_i, \Im z_i)$, so the diagonal is $(\Re\lambda, \Re\lambda)$ and $\mp\Im\lambda$
        is added off it.
      left: optional, the off-diagonal part's rows, state-shaped with a trailing axis, leaves
        `[*leaf.shape, k]` (real; on a complex leaf its real view, `[2, *leaf.shape, k]`, real parts first). With
        `right`, $L$ of the low-rank part $L R^\top$; without, the dense rows themselves ($k = N$, the columns in
        the real view's order). Its entries on the diagonal are ignored (on a complex leaf's $2 \times 2$
        blocks they add to $\lambda$'s). `None`: $J$ is diagonal (or, with
        `complete=False`, its off-diagonal part unknown).
      right: optional, $R$, laid out as `left`.
      complete: a Python bool (static). `False`: only the diagonal is declared (`left` and `right` must be
        `None`): the diagonal solvers use it, the dense ones form $J$ by `jax.jacfwd`.
    """

    diagonal: PyTree
    left: PyTree | None = None
    right: PyTree | None = None
    complete: bool = True


class _View(NamedTuple):
    """The state's real view: the float leaves' template, the state from a view vector, its length."""

    floats: list
    state: Callable  # (x [N], discrete) -> state
    size: int


def _view(state: PyTree) -> _View:
    """The real view of ``state`` (the order of ``unroll.parallel.episode_view``)."""
    split = split_discrete(state)
    x, unravel = ravel_pytree(real_parts(split.floats))
    return _View(
        split.floats, lambda v, discrete: split.merge(from_real_parts(unravel(v), split.floats), discrete), x.size
    )


def _float_entries(tree: PyTree, state: PyTree, name: str) -> list:
    """``tree``'s entries at the float leaves of ``state``, in order."""
    treedef = jax.tree_util.tree_structure(state)
    try:
        entries = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise BadValue(f"`StepJacobian.{name}` must have the state's structure ({treedef}); JAX said: {err}") from err
    return [e for e, x in zip(entries, jax.tree_util.tree_leaves(state)) if jnp.issubdtype(x.dtype, jnp.inexact)]


def _diagonal_view(jac: StepJacobian, state: PyTree) -> tuple[jax.Array, list]:
    """``(diag [N], skew)``: the real view's diagonal of $\\mathrm{diag}(d)$, and per complex leaf
    ``(offset, Im d)``, the off-diagonal part of its $2 \\times 2$ blocks."""
    parts, skew, offset = [], [], 0
    for d, x in zip(_float_entries(jac.diagonal, state, "diagonal"), _view(state).floats):
        d = jnp.broadcast_to(jnp.asarray(d), x.shape)
        if jnp.iscomplexobj(x):
            parts += [jnp.ravel(jnp.real(d)), jnp.ravel(jnp.real(d))]
            skew.append((offset, jnp.ravel(jnp.imag(d))))
            offset += 2 * x.size
        else:
            if jnp.iscomplexobj(d):
                raise BadType(f"`StepJacobian.diagonal` is complex on a real state leaf of shape {x.shape}.")
            parts.append(jnp.ravel(d))
            offset += x.size
    dtype = jnp.result_type(*(jnp.real(x).dtype for x in _view(state).floats))
    return jnp.concatenate(parts).astype(dtype) if parts else jnp.zeros(0, dtype), skew


def _factor_view(factor: PyTree, state: PyTree, name: str) -> jax.Array:
    """An off-diagonal factor on the real view, ``[N, k]``."""
    rows = []
    for f, x in zip(_float_entries(factor, state, name), _view(state).floats):
        f = jnp.asarray(f)
        shape = ((2,) if jnp.iscomplexobj(x) else ()) + x.shape
        if f.shape[:-1] != shape or jnp.iscomplexobj(f):
            raise BadValue(
                f"`StepJacobian.{name}` must be real with leaves [*leaf.shape, k] ([2, *leaf.shape, k] on a complex "
                f"leaf); got {f.dtype}{list(f.shape)} for a leaf {x.dtype}{list(x.shape)}."
            )
        rows.append(f.reshape(-1, f.shape[-1]))
    return jnp.concatenate(rows)


def _check_factors(jac: StepJacobian) -> None:
    if jac.left is None and jac.right is not None:
        raise BadValue("`StepJacobian.right` needs `left` (the low-rank part is left right^T).")
    if not jac.complete and jac.left is not None:
        raise BadValue("`StepJacobian(complete=False)` declares the diagonal only: pass left=None, right=None.")


def view_jacobian(jac: StepJacobian, state: PyTree, *, diagonal: bool) -> jax.Array:
    r"""A `StepJacobian` on the state's real view (the vector `unroll.parallel.episode_view` iterates on).

    The float leaves are raveled in order, a complex leaf as its real parts then its imaginary
    parts; a complex diagonal $\lambda$ becomes the $2 \times 2$ blocks
    $\begin{pmatrix} \Re\lambda & -\Im\lambda \\ \Im\lambda & \Re\lambda \end{pmatrix}$.

    Args:
      jac: the `StepJacobian` at `state`.
      state: the state it was taken at (its structure, shapes and dtypes are read).
      diagonal: return $\mathrm{diag}(J)$ `[N]` (`True`: `left` and `right` are not read), or the dense $J$
        `[N, N]` (`False`; `jac` must be `complete`).

    Returns:
      $\mathrm{diag}(J)$ `[N]` or $J$ `[N, N]`, real.
    """
    _check_factors(jac)
    diag, skew = _diagonal_view(jac, state)
    if diagonal:
        return diag
    if not jac.complete:
        raise BadValue("a dense Jacobian needs a `complete` StepJacobian; this one declares its diagonal only.")
    off = jnp.zeros((), diag.dtype)
    if jac.left is not None:
        left = _factor_view(jac.left, state, "left")
        off = left if jac.right is None else left @ _factor_view(jac.right, state, "right").T
        if off.shape != (diag.size, diag.size):
            raise BadValue(
                f"`StepJacobian.left` without `right` gives the dense rows, {diag.size} columns (the real view's "
                f"length); got {off.shape[-1]}."
            )
    dense = jnp.where(np.eye(diag.size, dtype=bool), diag[:, None], off)  # (a select: jnp.diag is slow under vmap)
    for offset, imag in skew:  # the 2x2 blocks of a complex diagonal: (Re, Im) -> -Im lambda, (Im, Re) -> Im lambda
        re = offset + np.arange(imag.size)
        dense = dense.at[re, re + imag.size].add(-imag).at[re + imag.size, re].add(imag)
    return dense


def jacobian_diagonal(jac: StepJacobian) -> StepJacobian:
    """The diagonal of `jac` alone, as a `StepJacobian(complete=False)`.

    For composing a step whose Jacobian's off-diagonal part is not declared (e.g. stacked
    layers: each layer's diagonal is its own cell's).

    Args:
      jac: a `StepJacobian`.

    Returns:
      The `StepJacobian` of the same diagonal, `complete=False`.
    """
    _check_factors(jac)
    return StepJacobian(jac.diagonal, complete=False)


# --------------------------------------------------------------------------- on an episode


def _declared(declared: Callable, theta, view: _View, step: Callable, diagonal: bool) -> Callable:
    """``(x, (discrete, t)) -> (x', J)`` from a system's ``jacobian(theta, state, t)``."""

    def linearize(x, xs):
        discrete, t = xs
        state = view.state(x, discrete)
        return step(x, xs), view_jacobian(_checked(declared(theta, state, t)), state, diagonal=diagonal)

    return linearize


def _checked(jac) -> StepJacobian:
    if not isinstance(jac, StepJacobian):
        raise BadType(
            f"`system.jacobian(theta, state, t)` must return an unroll.StepJacobian, got {type(jac).__name__}; "
            "build one with unroll.StepJacobian(diagonal, left=None, right=None)."
        )
    return jac


def _spec(tree: PyTree):
    """A hashable description of ``tree``'s structure, shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves)


@functools.lru_cache(maxsize=64)
def _cached_coloring(system, theta_spec, typed_key: bool):
    treedef, shapes = theta_spec
    theta = treedef.unflatten([jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    key = jax.random.key(0) if typed_key else jax.random.PRNGKey(0)
    return state_coloring(system, theta, key)


def _coloring(system, theta, key) -> np.ndarray | None:
    """``[N]`` the colour of each coordinate of the real view (structural, found once per system
    and shapes), or ``None`` when the pattern cannot be found."""
    typed = jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key)
    try:
        try:
            return _cached_coloring(system, _spec(theta), typed)
        except TypeError:  # an unhashable system: no cache
            return state_coloring(system, theta, jax.random.key(0) if typed else jax.random.PRNGKey(0))
    except Exception:  # noqa: BLE001 -- a step that cannot run at a random point loses a speed-up, not its solve
        return None


def _colored_diagonal(step: Callable, color: np.ndarray) -> Callable:
    """``(x, xs) -> (x', diag J)`` from one jvp per colour (exact for a colouring of $J$'s columns)."""
    probes = jnp.asarray(np.arange(int(color.max()) + 1)[:, None] == color[None, :])  # [C, N]

    def linearize(x, xs):
        value, tangent = jax.linearize(lambda y: step(y, xs), x)
        return value, jnp.sum(jax.vmap(tangent)(probes.astype(x.dtype)) * probes, 0)

    return linearize


def _jacfwd(step: Callable, diagonal: bool) -> Callable:
    def linearize(x, xs):
        jacobian = jax.jacfwd(step)(x, xs)
        return step(x, xs), jnp.diagonal(jacobian) if diagonal else jacobian

    return linearize


def episode_jacobian(system, theta: PyTree, key: jax.Array, *, solver: str) -> Callable:
    r"""`jacobian(x, xs) -> (x', J)` for `unroll.parallel.solve_recurrence` on the episode `init(theta, key)` starts.

    On the real view of `unroll.parallel.episode_view` (`xs = (discrete, t)`), $J$ is
    $\mathrm{diag}(J_t)$ `[N]` for the diagonal solvers (`DIAGONAL_SOLVERS`) and $J_t$ `[N, N]`
    otherwise, formed by the cheapest exact rule:

    * the system's declared `jacobian(theta, state, t) -> StepJacobian` (`System(..., jacobian=...)`), where it
      declares one (a `complete` one for the dense solvers);
    * for the diagonal solvers, one jvp per colour of the structural pattern of $J$ (one where the step is
      elementwise) when that takes fewer than $N$;
    * else `jax.jacfwd` ($N$ jvps).

    Args:
      system: the system.
      theta: the outer parameters.
      key: the episode's key.
      solver: the Newton solver the Jacobian is for (`unroll.parallel.SOLVERS`).

    Returns:
      The `jacobian` callable.
    """
    start = system.init(theta, key)
    view = _view(start)

    def step(x, xs):
        discrete, t = xs
        new = system.step(theta, view.state(x, discrete), t)[0]
        return ravel_pytree(real_parts(split_discrete(new).floats))[0]

    diagonal = solver in DIAGONAL_SOLVERS
    declared = getattr(system, "jacobian", None)
    if declared is not None:
        if not callable(declared):
            raise BadType(
                f"`system.jacobian` must be a function jacobian(theta, state, t) -> StepJacobian, got "
                f"{type(declared).__name__}; pass unroll.System(..., jacobian=...) or leave it None."
            )
        probe = declared(theta, start, jnp.zeros((), jnp.int32))  # what it declares (None: nothing), at trace time
        if probe is not None and (diagonal or _checked(probe).complete):
            return _declared(declared, theta, view, step, diagonal)
    if diagonal and view.size > 1:
        color = _coloring(system, theta, key)
        if color is not None and color.size == view.size and color.max() + 1 < view.size:
            return _colored_diagonal(step, color)
    return _jacfwd(step, diagonal)
