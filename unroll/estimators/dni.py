"""Synthetic gradients: decoupled neural interfaces (Jaderberg et al. 2016).

Truncated BPTT whose window objective adds the synthesizer's prediction of the
future: for a window of ``K`` steps from ``s_0`` to ``s_K``,

    J(theta, s_0) = sum_k l_k + <stop_gradient(S(s_K, t_K; phi)), s_K>,

``S`` predicting ``d (sum of the episode's remaining losses) / d s_K`` (zero when
the window ends its episode: there is no future). The theta estimate is
``grad_theta J / K``, on the same scale as truncated BPTT (the mean over an
episode's windows is the episode gradient when ``S`` is exact). Backpropagating
``J`` also gives ``delta_0 = dJ/ds_0``, the bootstrapped target of the previous
boundary: ``phi`` takes one optax step on ``mean |S(s_0) - stop_gradient(delta_0)|^2``
per window (over trajectories whose incoming episode is not over).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from unroll._constructor import check_window, keyword_only
from unroll._system import (
    check_positive_int,
    check_real_state,
    inexact_leaves,
    with_inexact_leaves,
)
from unroll.builder import plain_rule, windowed
from unroll.contract import Estimator, Gradient

__all__ = ["Synthesis", "Synthesizer", "dni", "linear_synthesizer", "mlp_synthesizer"]


class Synthesizer(NamedTuple):
    r"""A synthetic-gradient model for `dni`: $S(s, t; \phi) \approx \frac{d L_\text{future}}{d s}$.

    $S$ acts on the flattened (float) state $s$ of size `state_size`, at episode time $t$,
    and predicts the derivative of the episode's remaining losses with respect to $s$.
    Build one with `linear_synthesizer()` or `mlp_synthesizer(hidden)`, or pass any pair of
    pure functions (e.g. an oracle, in tests).

    Attributes:
        init: `init(key, state_size, dtype) -> phi`, the synthesizer's initial parameters
            (any pytree) for a state of `state_size` floats of `dtype`; called once, at the
            estimator's `init`.
        apply: `apply(phi, s, t) -> dL_future/ds`, the prediction for one trajectory: `s`
            the flattened float state, shape `[state_size]`, `t` the int32 step of the
            episode; it returns an array of the shape of `s`.
    """

    init: Callable[[jax.Array, int, Any], Any]
    apply: Callable[[Any, jax.Array, jax.Array], jax.Array]


def linear_synthesizer() -> Synthesizer:
    r"""The linear synthesizer $S(s) = A s + c$, starting at zero.

    Starting at $A = 0$, $c = 0$ makes the first windows truncated BPTT. It ignores the
    episode time $t$.

    Returns:
        A `Synthesizer` whose parameters are `{"A": [n, n], "c": [n]}`, $n$ the size of the
        flattened float state.
    """

    def init(key, size, dtype):
        return {"A": jnp.zeros((size, size), dtype), "c": jnp.zeros(size, dtype)}

    return Synthesizer(init, lambda phi, s, t: phi["A"] @ s + phi["c"])


def mlp_synthesizer(hidden: int = 64) -> Synthesizer:
    r"""The one-hidden-layer synthesizer $S(s) = W_2 \tanh(W_1 s + b_1) + b_2$.

    $W_1$ starts at $\mathcal N(0, 1/n)$ entries, the biases and the output layer $W_2$ at
    zero (so, like `linear_synthesizer`, the first windows are truncated BPTT). It ignores
    the episode time $t$.

    Args:
        hidden: the width of the hidden layer (an int $\ge 1$, default 64).

    Returns:
        A `Synthesizer` whose parameters are `{"W1": [hidden, n], "b1": [hidden],
        "W2": [n, hidden], "b2": [n]}`, $n$ the size of the flattened float state.

    Raises:
        TypeError: `hidden` is not an int.
        ValueError: `hidden` is below 1.
    """
    hidden = check_positive_int(hidden, "hidden", "It is the width of the synthesizer's hidden layer, e.g. hidden=64.")

    def init(key, size, dtype):
        w1 = jax.random.normal(key, (hidden, size), dtype) / jnp.sqrt(size)
        return {
            "W1": w1,
            "b1": jnp.zeros(hidden, dtype),
            "W2": jnp.zeros((size, hidden), dtype),
            "b2": jnp.zeros(size, dtype),
        }

    def apply(phi, s, t):
        return phi["W2"] @ jnp.tanh(phi["W1"] @ s + phi["b1"]) + phi["b2"]

    return Synthesizer(init, apply)


class Synthesis(NamedTuple):
    """DNI's shared state (`state.shared`): the synthesizer's parameters and its
    optimizer's state (replicated, not per trajectory)."""

    params: Any
    opt_state: Any


def _flat_states(states) -> jax.Array:
    """``[W, P, n]``: each trajectory's float state leaves as one vector."""
    return jax.vmap(jax.vmap(lambda s: ravel_pytree(inexact_leaves(s))[0]))(states)


def _synthetic_gradient(synthesizer: Synthesizer, optimizer, horizon: int):
    """DNI's ``WindowGradient``: ``grad_theta J / (W K)`` and ``delta_0 = dJ/ds_0`` by one
    backward pass through the window, then one optax step of the synthesizer towards
    ``delta_0`` at the window's start."""
    predict = lambda params, flat, t: jax.vmap(jax.vmap(lambda s, t: synthesizer.apply(params, s, t)))(flat, t)

    def gradient(window, theta, synthesis):
        params = synthesis.params

        def objective(theta, floats):
            result = window.run(theta, floats)
            end = _flat_states(result.end_states)
            has_future = (result.end_times < horizon)[..., None]  # an episode's last window has no future
            synthetic = jax.lax.stop_gradient(jnp.where(has_future, predict(params, end, result.end_times), 0.0))
            return jnp.sum(result.losses) + jnp.sum(synthetic * end), result

        floats = inexact_leaves(window.start_states)
        (grad, delta), result = jax.grad(objective, argnums=(0, 1), has_aux=True)(theta, floats)
        grad = jax.tree_util.tree_map(lambda g: g / window.num_steps, grad)

        # bootstrapped targets at the window start: delta_0 = dJ/ds_0 per trajectory
        starts = _flat_states(window.start_states)
        targets = jax.lax.stop_gradient(_flat_states(with_inexact_leaves(window.start_states, delta)))
        live = (window.start_times < horizon).astype(starts.dtype)  # a finished episode has no future

        def synthesizer_loss(params):
            errors = jnp.sum((predict(params, starts, window.start_times) - targets) ** 2, axis=-1)
            return jnp.sum(live * errors) / jnp.maximum(jnp.sum(live), 1.0)

        loss_s, grad_phi = jax.value_and_grad(synthesizer_loss)(params)
        updates, opt_state = optimizer.update(grad_phi, synthesis.opt_state, params)
        synthesis = Synthesis(optax.apply_updates(params, updates), opt_state)
        return Gradient(grad, result, synthesis, {"synthesizer_loss": loss_s})

    return gradient


@keyword_only
def dni(
    system,
    *,
    truncation: int,
    num_workers: int = 1,
    synthesizer: Synthesizer | None = None,
    synthesizer_optimizer: optax.GradientTransformation | None = None,
) -> Estimator:
    r"""Decoupled neural interfaces (Jaderberg et al. 2016): truncated BPTT plus a learned synthetic gradient.

    The window objective adds the synthesizer's prediction of the future: for a window of
    $K$ steps from $s_0$ to $s_K$,

    $$
    J(\theta, s_0) = \sum_{k<K} \ell_k
        + \big\langle \operatorname{stop\_gradient}(S(s_K, t_K; \phi)),\, s_K \big\rangle,
    $$

    $S$ predicting $\frac{d}{d s_K}$ of the episode's remaining losses (zero when the
    window ends its episode: there is no future). The theta estimate is
    $g = \nabla_\theta J / K$, on the same scale as truncated BPTT (the mean over an
    episode's windows is the episode gradient when $S$ is exact), averaged over workers.
    Backpropagating $J$ also gives $\delta_0 = \frac{\partial J}{\partial s_0}$, the
    bootstrapped target of the previous boundary: $\phi$ takes one optax step on
    $\operatorname{mean} |S(s_0) - \operatorname{stop\_gradient}(\delta_0)|^2$ per window
    (over trajectories whose incoming episode is not over). Biased while $S$ is inexact.

    Args:
        system: the unrolled system (`init`, `step`, `horizon` = $T$), e.g. an `unroll.System`,
            with a real state (complex leaves are refused at `init`).
        truncation: $K$, the steps of one window (an int, $1 \le K \le T$); one call of
            `estimate` takes $W K$ system steps.
        num_workers: $W$, independent trajectories, started at staggered steps
            $\lfloor w T / W \rfloor$ of their episodes; the estimate is their mean (one
            synthesizer is shared by all). Default 1.
        synthesizer: the model $S$ of the future's gradient: `linear_synthesizer()` (default,
            `None`), `mlp_synthesizer(hidden)`, or any `Synthesizer(init, apply)` (an oracle,
            in tests). It is initialized at `init` on the flattened float state.
        synthesizer_optimizer: the optax transformation that trains $\phi$, one update per
            window; default `None`: `optax.adam(1e-3)`.

    Returns:
        An `Estimator` (`unroll.contract.Estimator`); its state is a `WindowState` whose
        `shared` part is the synthesizer's parameters and optimizer state (`Synthesis`,
        replicated, not per trajectory); `info` has `loss`, `steps` ($W K$) and
        `synthesizer_loss` (the synthesizer's regression loss before its update).

    Raises:
        TypeError: `system` lacks `init`, `step` or `horizon`, or an argument is not an int;
            at `init`, a state with complex leaves.
        ValueError: `truncation` is out of $[1, T]$ or `num_workers` is below 1.
    """
    truncation, num_workers = check_window(system, truncation, num_workers)
    synthesizer = synthesizer or linear_synthesizer()
    optimizer = synthesizer_optimizer or optax.adam(1e-3)

    def synthesis(theta, key):
        leaves = inexact_leaves(jax.eval_shape(system.init, theta, key))
        check_real_state("dni", leaves)
        size = sum(x.size for x in leaves)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        params = synthesizer.init(jax.random.fold_in(key, 0x444E49), size, dtype)
        return Synthesis(params, optimizer.init(params))

    return windowed(
        system,
        plain_rule(system),
        truncation=truncation,
        num_workers=num_workers,
        gradient=_synthetic_gradient(synthesizer, optimizer, system.horizon),
        shared_state=synthesis,
    )
