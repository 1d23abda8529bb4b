"""Structured step Jacobians (``unroll.jacobians``), in float64.

The proofs: every cell's declared ``StepJacobian`` is ``jax.jacfwd``'s (dense and diagonal)
to 1e-12, also on the real view of a system with several float leaves, a complex leaf and
discrete leaves; the Jacobian found by colouring the structural pattern is exact where the
step is elementwise (one jvp) or a complex elementwise one (two), and a dense step is not
taken for one; DEER and quasi-DEER with the declared Jacobians give the sequential
trajectory and ``full_bptt``'s gradient to 1e-8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import unroll
from tests.systems import diagonal_system, diagonal_theta, gain_theta, rnn_system
from unroll import jacobians, parallel, tasks
from unroll._system import from_real_parts, real_parts, split_discrete
from unroll.estimators._sparsity import state_coloring
from unroll.tasks.rnn import CELLS

KEY = jax.random.key(0)


def _noisy(tree, seed: int, scale: float = 1.0):
    """``tree`` plus Gaussian noise on its float leaves (complex ones in both parts)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for x in leaves:
        if jnp.issubdtype(x.dtype, jnp.inexact):
            noise = rng.normal(size=x.shape) + (1j * rng.normal(size=x.shape) if jnp.iscomplexobj(x) else 0)
            x = x + scale * noise.astype(x.dtype)
        out.append(x)
    return treedef.unflatten(out)


def _reference(step, state):
    """``jax.jacfwd`` of ``step(state)`` on the real view of ``state``'s float leaves, ``[N, N]``."""
    split = split_discrete(state)
    x0, unravel = ravel_pytree(real_parts(split.floats))
    view = lambda s: ravel_pytree(real_parts(split_discrete(s).floats))[0]
    return jax.jacfwd(lambda x: view(step(split.merge(from_real_parts(unravel(x), split.floats), split.discrete))))(x0)


def _assert_matches(jac, state, reference):
    np.testing.assert_allclose(jacobians.view_jacobian(jac, state, diagonal=False), reference, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        jacobians.view_jacobian(jac, state, diagonal=True), np.diagonal(reference), rtol=0, atol=1e-12
    )


# --------------------------------------------------------------------------- the cells


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell_declares_its_exact_jacobian(name):
    cell = CELLS[name]()
    params = _noisy(cell.init(jax.random.key(1), 3, 5, jnp.float64), seed=2, scale=0.3)
    state = _noisy(cell.initial(params, 5, jnp.float64), seed=3)
    x = jnp.asarray(np.random.default_rng(4).normal(size=3))
    reference = _reference(lambda s: cell.apply(params, s, x), state)
    assert np.max(np.abs(reference - np.diag(np.diagonal(reference)))) > 1e-3 or name in ("gilr", "lru")
    _assert_matches(cell.jacobian(params, state, x), state, reference)


# --------------------------------------------------------------------------- a mixed state


def _mixed_system(horizon: int = 30) -> unroll.System:
    """State ``{"count": int, "h": [3], "key", "m": [], "z": complex [2]}``:
    ``z' = lambda z + u_t``, ``h' = tanh(W h + V Re z + c sin t)``, ``m' = 0.9 m + mean(h)``;
    its declared Jacobian has a complex diagonal, a scalar leaf and an off-diagonal low-rank
    part that reaches into the complex leaf's real view."""

    def init(theta, key):
        return {"count": jnp.int32(0), "h": jnp.tanh(theta["h0"]), "key": key, "m": jnp.float64(0.0),
                "z": jnp.zeros(2, jnp.complex128)}  # fmt: skip

    def lam(theta):
        return jnp.exp(jax.lax.complex(-jnp.exp(theta["nu"]), theta["phase"]))

    def drive(state, t):
        return jax.random.normal(jax.random.fold_in(state["key"], t), (2,))

    def step(theta, state, t):
        z = lam(theta) * state["z"] + drive(state, t)
        h = jnp.tanh(theta["W"] @ state["h"] + theta["V"] @ jnp.real(state["z"]) + theta["c"] * jnp.sin(t))
        m = 0.9 * state["m"] + jnp.mean(state["h"])
        loss = 0.5 * (theta["r"] @ h + m + jnp.sum(jnp.imag(z)) - jnp.cos(t)) ** 2
        return {"count": state["count"] + 1, "h": h, "key": state["key"], "m": m, "z": z}, loss

    def jacobian(theta, state, t):
        h = step(theta, state, t)[0]["h"]
        slope = (1 - h**2)[:, None]
        eye = jnp.eye(3)
        left = {"count": None, "h": jnp.concatenate([slope * theta["W"], slope * theta["V"]], 1), "key": None,
                "m": jnp.concatenate([jnp.full(3, 1 / 3), jnp.zeros(2)]), "z": jnp.zeros((2, 2, 5))}  # fmt: skip
        z_columns = jnp.zeros((2, 2, 5)).at[0, :, 3:].set(jnp.eye(2))  # the columns of Re z
        right = {"count": None, "h": jnp.concatenate([eye, jnp.zeros((3, 2))], 1), "key": None,
                 "m": jnp.zeros(5), "z": z_columns}  # fmt: skip
        diagonal = {"count": None, "h": slope[:, 0] * jnp.diagonal(theta["W"]), "key": None, "m": 0.9, "z": lam(theta)}
        return unroll.StepJacobian(diagonal, left, right)

    return unroll.System(init, step, horizon, jacobian=jacobian)


def _mixed_theta():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 3))
    return {"W": 0.8 * w / np.max(np.abs(np.linalg.eigvals(w))), "V": rng.normal(size=(3, 2)), "c": rng.normal(size=3),
            "r": rng.normal(size=3), "h0": rng.normal(size=3), "nu": np.log([0.3, 0.1]), "phase": np.array([0.4, -0.7])}  # fmt: skip


def test_a_declared_jacobian_maps_onto_the_real_view():
    """Several float leaves (a scalar among them), a complex leaf (its 2x2 blocks and a
    low-rank part on its real view) and int and key leaves, which are not in the view."""
    system, theta = _mixed_system(), _mixed_theta()
    state = _noisy(system.init(theta, KEY), seed=6)
    t = jnp.int32(3)
    reference = _reference(lambda s: system.step(theta, s, t)[0], state)
    _assert_matches(system.jacobian(theta, state, t), state, reference)
    assert np.abs(reference[7, 9]) > 1e-3  # (Re z_0, Im z_0): the complex leaf's off-diagonal block


def test_the_episode_jacobian_is_jacfwds_on_the_episode_view():
    system, theta = _mixed_system(), _mixed_theta()
    view = parallel.episode_view(system, theta, KEY)
    x = jnp.asarray(np.random.default_rng(7).normal(size=view.x0.shape))
    xs = (view.discrete, jnp.int32(4))
    reference = jax.jacfwd(view.advance)(x, xs)
    for solver, expected in (("deer", reference), ("quasi-deer", np.diagonal(reference))):
        value, jac = jacobians.episode_jacobian(system, theta, KEY, solver=solver)(x, xs)
        np.testing.assert_allclose(value, view.advance(x, xs), rtol=0, atol=1e-14)
        np.testing.assert_allclose(jac, expected, rtol=0, atol=1e-12)


def test_a_diagonal_only_declaration_serves_the_diagonal_solvers_only():
    cell = CELLS["tanh"]()
    params = _noisy(cell.init(jax.random.key(1), 3, 4, jnp.float64), seed=2, scale=0.3)
    h, x = jnp.asarray(np.random.default_rng(8).normal(size=4)), jnp.ones(3)
    full = cell.jacobian(params, h, x)
    only = jacobians.jacobian_diagonal(full)
    assert not only.complete and only.left is None
    np.testing.assert_allclose(
        jacobians.view_jacobian(only, h, diagonal=True), jacobians.view_jacobian(full, h, diagonal=True), atol=1e-15
    )
    with pytest.raises(ValueError, match="complete"):
        jacobians.view_jacobian(only, h, diagonal=False)


# --------------------------------------------------------------------------- found, not declared


def _colors(system, theta):
    return state_coloring(system, theta, KEY)


@pytest.mark.parametrize("complex_state", [False, True])
def test_an_elementwise_step_is_detected_and_its_diagonal_exact(complex_state):
    """One jvp (an all-ones probe) for a real elementwise step, two for a complex one
    (its real view is 2x2-block diagonal), and the diagonal is jacfwd's."""
    system, theta = diagonal_system(n=4, complex_state=complex_state), diagonal_theta(n=4, complex_state=complex_state)
    assert getattr(system, "jacobian", None) is None
    assert int(np.max(_colors(system, theta))) + 1 == (2 if complex_state else 1)
    view = parallel.episode_view(system, theta, KEY)
    x = jnp.asarray(np.random.default_rng(9).normal(size=view.x0.shape))
    xs = (view.discrete, jnp.int32(2))
    linearize = jacobians.episode_jacobian(system, theta, KEY, solver="quasi-deer")
    size = view.x0.size
    assert f"[{size},{size}]" not in str(jax.make_jaxpr(linearize)(x, xs))  # no N x N Jacobian is formed
    np.testing.assert_allclose(linearize(x, xs)[1], np.diagonal(jax.jacfwd(view.advance)(x, xs)), rtol=0, atol=1e-14)


def test_a_dense_step_is_not_taken_for_an_elementwise_one():
    system, theta = rnn_system(n=4, horizon=10), gain_theta(0.9, n=4)
    assert sorted(_colors(system, theta)) == list(range(4))  # every column its own: jacfwd
    view = parallel.episode_view(system, theta, KEY)
    x = jnp.asarray(np.random.default_rng(10).normal(size=view.x0.shape))
    xs = (view.discrete, jnp.int32(1))
    diag = jacobians.episode_jacobian(system, theta, KEY, solver="quasi-deer")(x, xs)[1]
    np.testing.assert_allclose(diag, np.diagonal(jax.jacfwd(view.advance)(x, xs)), rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- DEER with them


def _relative(a, b) -> float:
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)]) for t in (a, b))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _case(name: str):
    if name == "mixed":
        return _mixed_system(), _mixed_theta()
    cell, layers = (name[:-3], 2) if name.endswith("-x2") else (name, 1)
    system, theta, _ = tasks.flip_flop(
        horizon=30, cell=cell, hidden=4, dtype=jnp.float64, num_bits=2, num_layers=layers
    )
    return system, theta


CASES = (*sorted(CELLS), "gru-x2", "mixed")


@pytest.mark.parametrize("solver", ["deer", "quasi-deer"])
@pytest.mark.parametrize("name", CASES)
def test_newton_with_the_declared_jacobian_is_exact(name, solver):
    """The solve is the sequential trajectory and the gradient is ``full_bptt``'s, with the
    declared Jacobian in use (a spy counts its traces)."""
    system, theta = _case(name)
    calls = []
    spied = system._replace(jacobian=lambda *a: calls.append(1) or system.jacobian(*a))
    solution = jax.jit(lambda th: parallel.solve_episode(spied, th, KEY, solver=solver, max_iterations=100))(theta)
    assert calls and bool(solution.converged), (name, solver, solution.iterations, solution.residual)
    state, losses = system.init(theta, KEY), []
    for t in range(system.horizon):  # the reference losses, one step at a time
        state, loss = system.step(theta, state, jnp.int32(t))
        losses.append(loss)
    np.testing.assert_allclose(solution.losses, np.asarray(losses), rtol=1e-8, atol=1e-10)

    reference = unroll.full_bptt(system, num_workers=2)
    expected = jax.jit(reference.estimate)(theta, reference.init(theta, KEY), KEY)[0]
    est = unroll.parallel_bptt(spied, num_workers=2, solver=solver)
    grad, _, info = jax.jit(est.estimate)(theta, est.init(theta, KEY), KEY)
    assert int(info["fallback"]) == 0 and int(info.get("adjoint_fallback", 0)) == 0, info
    assert _relative(grad, expected) < 1e-8


def test_a_bad_declaration_is_refused_with_the_fix():
    system, theta = rnn_system(n=3, horizon=5), gain_theta(0.9, n=3)
    not_one = system._replace(jacobian=lambda theta, state, t: {"diagonal": state})
    with pytest.raises(TypeError, match="must return an unroll.StepJacobian"):
        parallel.solve_episode(not_one, theta, KEY, solver="quasi-deer")
    state = system.init(theta, KEY)
    ones = jax.tree_util.tree_map(jnp.ones_like, state)
    two = jax.tree_util.tree_map(lambda x: jnp.ones(x.shape + (2,)), state)
    with pytest.raises(ValueError, match="3 columns"):  # dense rows need N = 3 columns
        jacobians.view_jacobian(unroll.StepJacobian(ones, two), state, diagonal=False)
    with pytest.raises(ValueError, match="needs `left`"):
        jacobians.view_jacobian(unroll.StepJacobian(ones, None, two), state, diagonal=True)
