"""The network over a sequence: stacked cells and a readout (``network_theta``,
``build_network``), the step loss ``cross_entropy`` and the held-out evaluator.

A network's system state is the cells' state plus a data state (an int or a key): no
sequence is stored in it. With a cell that has a parallel form and a data stream drawn
at once, the system also has ``episode``, the per-step losses in parallel over time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from unroll._system import System, check_positive_int, inexact_leaves
from unroll._tree import PyTree
from unroll.jacobians import StepJacobian, jacobian_diagonal
from unroll.tasks.evaluation import map_episodes
from unroll.tasks.rnn._cells import Cell, glorot

PARALLEL_CHUNK = 2048
"""Steps the parallel form runs at once: longer sequences run as chunks of this many
steps, one after another, each recomputed in the backward pass (memory $O(T / c + c)$
states for chunks of $c$ steps)."""


def check_num_layers(num_layers: Any) -> int:
    """``num_layers`` as an int, checked to be at least 1."""
    return check_positive_int(
        num_layers,
        "num_layers",
        "It counts the stacked cells (layer l + 1 reads layer l's features): use 1 or more, e.g. num_layers=2.",
    )


def layer_params(cell_params: PyTree, num_layers: int) -> tuple:
    """The per-layer params of ``theta["cell"]``: the dict itself for one layer, else its
    ``num_layers`` entries."""
    return (cell_params,) if num_layers == 1 else tuple(cell_params)


def network_theta(
    cell: Cell, key, input_size: int, hidden: int, num_outputs: int, dtype=jnp.float32, num_layers: int = 1
) -> dict:
    """The initial weights of a network of ``num_layers`` stacked ``cell``s and a readout.

    Args:
        cell: the ``Cell`` (``get_cell``).
        key: the JAX random key the weights are drawn from.
        input_size: the width of the inputs layer 0 reads.
        hidden: the width of each layer's state.
        num_outputs: the readout's width (the logits per step).
        dtype: the weights' dtype.
        num_layers: the number of stacked cells; layer $l > 0$ reads the
            $F$ = ``cell.num_features(hidden)`` features of layer $l - 1$.

    Returns:
        ``{"cell": cell params, "readout": {"W": [num_outputs, F], "b": [num_outputs]}}``,
        ``"cell"`` a tuple of per-layer params when ``num_layers > 1``.
    """
    k1, k2 = jax.random.split(key)
    features = cell.num_features(hidden)
    if num_layers == 1:
        params = cell.init(k1, input_size, hidden, dtype)
    else:
        keys = jax.random.split(k1, num_layers)
        params = tuple(cell.init(k, input_size if i == 0 else features, hidden, dtype) for i, k in enumerate(keys))
    return {
        "cell": params,
        "readout": {"W": 0.1 * glorot(k2, (num_outputs, features), dtype), "b": jnp.zeros(num_outputs, dtype)},
    }


def cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
    r"""The cross-entropy $-\log \operatorname{softmax}(\mathrm{logits})_{\mathrm{target}}$ (nats).

    Args:
        logits: the unnormalized log-probabilities, ``[num_classes]``.
        target: the class, an int in ``[0, num_classes)``.

    Returns:
        The scalar loss.
    """
    return -jax.nn.log_softmax(logits)[target]


class Network(NamedTuple):
    """A stack of cells and a readout over a sequence: ``forward(theta, state, t) ->
    (state, logits, target)``; the ``System`` scoring each step by ``loss(logits,
    target)``; and, when the cell and the data have parallel forms,
    ``sequence(theta, key) -> (logits [T, ...], targets [T, ...])`` of the episode
    ``init(theta, key)`` starts (else ``None``)."""

    system: System
    forward: Callable
    loss: Callable
    sequence: Callable | None = None


def build_network(
    cell: Cell,
    hidden: int,
    horizon: int,
    dtype,
    data_init,
    data_step,
    embed,
    loss,
    data_sequence=None,
    num_layers: int = 1,
    chunk: int | None = PARALLEL_CHUNK,
) -> Network:
    """State ``(cell state, data state)`` (the cell state a tuple over layers when
    ``num_layers > 1``); each step reads ``x_t, y_t, data' = data_step(data, t)``, runs
    the layers in turn on ``embed(theta, x_t)`` (layer ``l + 1`` on layer ``l``'s
    features) and scores the readout ``W features + b`` of the last layer.

    With ``cell.sequence`` and ``data_sequence(data0, horizon) -> (xs [T, ...], ys [T, ...])``
    (the whole stream, without a step loop), the system also has the parallel form
    ``episode``: the embedding, each layer over the whole sequence in turn, the readout
    and the loss, vmapped over time. A horizon longer than ``chunk`` runs as chunks of
    ``chunk`` steps, each in parallel, in turn (a ``lax.scan`` carrying the layers' states),
    each chunk recomputed in the backward pass: memory ``O(T / chunk + chunk)`` states
    instead of ``O(T)`` residuals, for one more forward pass (``chunk=None``: the whole
    sequence at once).

    With ``cell.jacobian`` the system declares its step's Jacobian (``System.jacobian``,
    ``_step_jacobian``), for Newton over time."""
    init, forward, step = _step_form(cell, hidden, dtype, data_init, data_step, embed, loss, num_layers)
    jacobian = None if cell.jacobian is None else _step_jacobian(cell, data_step, embed, num_layers)
    if cell.sequence is None or data_sequence is None:
        return Network(System(init, step, horizon, jacobian=jacobian), forward, loss)
    sequence, episode = _parallel_form(
        cell, hidden, horizon, dtype, data_init, embed, loss, data_sequence, num_layers, chunk
    )
    return Network(System(init, step, horizon, episode, jacobian), forward, loss, sequence)


def _readout(theta, features):
    """The readout ``W features + b``: the logits."""
    return theta["readout"]["W"] @ features + theta["readout"]["b"]


def _initial_states(cell: Cell, theta, hidden: int, dtype, num_layers: int) -> tuple:
    """Every layer's initial cell state, a tuple over layers."""
    return tuple(cell.initial(p, hidden, dtype) for p in layer_params(theta["cell"], num_layers))


def _step_form(cell: Cell, hidden: int, dtype, data_init, data_step, embed, loss, num_layers: int):
    """``build_network``'s step form: ``(init(theta, key), forward(theta, state, t), step(theta, state, t))``."""

    def init(theta, key):
        states = _initial_states(cell, theta, hidden, dtype, num_layers)
        return (states[0] if num_layers == 1 else states), data_init(key)

    def forward(theta, state, t):
        hs, data = state
        x, y, data = data_step(data, t)
        x = embed(theta, x)
        new = []
        for p, h in zip(layer_params(theta["cell"], num_layers), (hs,) if num_layers == 1 else hs):
            h = cell.apply(p, h, x)
            x = cell.features(h)
            new.append(h)
        return (new[0] if num_layers == 1 else tuple(new), data), _readout(theta, x), y

    def step(theta, state, t):
        state, logits, y = forward(theta, state, t)
        return state, loss(logits, y)

    return init, forward, step


def _step_jacobian(cell: Cell, data_step, embed, num_layers: int):
    """``jacobian(theta, state, t) -> StepJacobian`` of the network's step by its state: one
    layer's is its cell's; stacked layers declare their diagonal only (each layer's own
    cell's: layer ``l`` reads layer ``l - 1``'s new state, not its own old one, through its
    input). ``None`` where the data state has float leaves (their Jacobian is not known)."""

    def jacobian(theta, state, t):
        hs, data = state
        if inexact_leaves(data):
            return None
        x = embed(theta, data_step(data, t)[0])
        jacobians = []
        for p, h in zip(layer_params(theta["cell"], num_layers), (hs,) if num_layers == 1 else hs):
            jacobians.append(cell.jacobian(p, h, x))
            x = cell.features(cell.apply(p, h, x))
        if num_layers == 1:
            (jac,) = jacobians
            side = lambda factor: None if factor is None else (factor, data)  # data's entries are ignored
            return StepJacobian((jac.diagonal, data), side(jac.left), side(jac.right))
        return StepJacobian((tuple(jacobian_diagonal(j).diagonal for j in jacobians), data), complete=False)

    return jacobian


def _layers(cell: Cell, theta, states, features, num_layers: int):
    """Every layer over a stretch of the sequence: the states it ends in, the features."""
    ends = []
    for p, h0 in zip(layer_params(theta["cell"], num_layers), states):
        hs = cell.sequence(p, h0, features)
        ends.append(jax.tree_util.tree_map(lambda h: h[-1], hs))
        features = jax.vmap(cell.features)(hs)
    return tuple(ends), features


def _parallel_form(
    cell: Cell, hidden: int, horizon: int, dtype, data_init, embed, loss, data_sequence, num_layers, chunk
):
    """``build_network``'s parallel form: ``(sequence(theta, key), episode(theta, key))``, the
    episode in chunks of ``chunk`` steps when the horizon is longer."""

    def sequence(theta, key):
        xs, ys = data_sequence(data_init(key), horizon)
        states = _initial_states(cell, theta, hidden, dtype, num_layers)
        _, features = _layers(cell, theta, states, jax.vmap(lambda x: embed(theta, x))(xs), num_layers)
        return jax.vmap(lambda f: _readout(theta, f))(features), ys

    def episode(theta, key):
        if chunk is None or horizon <= chunk:
            logits, ys = sequence(theta, key)
            return jax.vmap(loss)(logits, ys)
        xs, ys = data_sequence(data_init(key), horizon)
        num_chunks = -(-horizon // chunk)
        pad = lambda a: jnp.concatenate([a, jnp.zeros((num_chunks * chunk - horizon,) + a.shape[1:], a.dtype)])
        chunks = jax.tree_util.tree_map(lambda a: pad(a).reshape((num_chunks, chunk) + a.shape[1:]), (xs, ys))

        @jax.checkpoint  # the backward pass recomputes a chunk instead of storing its insides
        def body(states, data):
            xs, ys = data
            states, features = _layers(cell, theta, states, jax.vmap(lambda x: embed(theta, x))(xs), num_layers)
            return states, jax.vmap(loss)(jax.vmap(lambda f: _readout(theta, f))(features), ys)

        states = _initial_states(cell, theta, hidden, dtype, num_layers)
        _, losses = jax.lax.scan(body, states, chunks)
        return losses.reshape(-1)[:horizon]  # (the padding's steps come after the last and are dropped)

    return sequence, episode


def keyed_network(
    cell: Cell,
    hidden: int,
    horizon: int,
    dtype,
    at: Callable,
    embed,
    loss,
    num_layers: int = 1,
    chunk: int | None = PARALLEL_CHUNK,
) -> Network:
    """``build_network`` over a stream drawn from the episode key alone,
    ``at(key, t) -> (x_t, y_t)``: the key is the data state, and the whole sequence is
    ``at`` vmapped over ``t``."""

    def data_step(key, t):
        x, y = at(key, t)
        return x, y, key

    def data_sequence(key, horizon):
        return jax.vmap(lambda t: at(key, t))(jnp.arange(horizon))

    return build_network(
        cell, hidden, horizon, dtype, lambda key: key, data_step, embed, loss, data_sequence, num_layers, chunk
    )


def network_evaluator(network: Network, key, num_episodes: int, metrics: dict | None = None) -> Callable:
    """``theta -> {"objective": mean step loss, name: scale * mean step score(logits,
    target, t), ...}`` for ``metrics = {name: (score, scale)}``, averaged over
    ``num_episodes`` fixed episodes (``split(key, num_episodes)``) in one pass each: the
    parallel form where the network has one, else a ``lax.scan`` of the steps."""
    keys = jax.random.split(key, num_episodes)
    metrics = metrics or {}
    horizon = network.system.horizon

    def scores(logits, y, t):
        return {"objective": network.loss(logits, y), **{n: score(logits, y, t) for n, (score, _) in metrics.items()}}

    def one(theta, key):
        if network.sequence is not None:
            logits, ys = network.sequence(theta, key)
            per_step = jax.vmap(scores)(logits, ys, jnp.arange(horizon))
        else:

            def body(state, t):
                state, logits, y = network.forward(theta, state, t)
                return state, scores(logits, y, t)

            _, per_step = jax.lax.scan(body, network.system.init(theta, key), jnp.arange(horizon))
        return jax.tree_util.tree_map(jnp.mean, per_step)

    def evaluate(theta):
        out = map_episodes(lambda k: one(theta, k), keys, horizon, parallel=network.sequence is not None)
        out = jax.tree_util.tree_map(jnp.mean, out)
        return {"objective": out["objective"], **{n: out[n] * scale for n, (_, scale) in metrics.items()}}

    return evaluate
