"""Long-dependency classification (Martin & Cundy 2018): the class shown at the start of
a long noisy sequence, asked for at its last step."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import check_positive_int
from unroll.task import Task
from unroll.tasks.rnn._cells import TIMESCALE_CELLS, get_cell
from unroll.tasks.rnn._network import (
    PARALLEL_CHUNK,
    check_num_layers,
    cross_entropy,
    keyed_network,
    network_evaluator,
    network_theta,
)
from unroll.tasks.rnn._setup import network_setup


def long_dependency_sequence(key, horizon: int, num_classes: int, signal_length: int = 1, noise: float = 0.1):
    """One episode of the long-dependency classification.

    The class $k$ is drawn from the episode key; the first ``signal_length`` inputs are
    ``one_hot(k)``, the others ``noise`` times $N(0, I)$ (step $t$'s from
    ``fold_in(noise key, t)``). ``long_dependency_step`` gives step $t$ of the same values.

    Args:
        key: the episode's JAX random key.
        horizon: $T$, the number of steps.
        num_classes: the number of classes (the inputs' width).
        signal_length: the number of steps that show the class.
        noise: the scale of the other steps' Gaussian inputs.

    Returns:
        ``(xs [T, num_classes] float, ys [T] int32)``, ``ys`` the class $k$ at
        $t = T - 1$ and $-1$ (no target) elsewhere.
    """
    return jax.vmap(lambda t: long_dependency_step(key, t, horizon, num_classes, signal_length, noise))(
        jnp.arange(horizon)
    )


def long_dependency_step(key, t, horizon: int, num_classes: int, signal_length: int = 1, noise: float = 0.1):
    """Step ``t``'s ``(x [num_classes], y)`` of ``long_dependency_sequence``.

    Args:
        key: the episode's JAX random key.
        t: the step, an int (traced or not).
        horizon: $T$, the number of steps.
        num_classes: the number of classes (the input's width).
        signal_length: the number of steps that show the class.
        noise: the scale of the other steps' Gaussian inputs.

    Returns:
        ``(x, y)``: the float input ``[num_classes]`` and the int32 target (the class at
        $t = T - 1$, else $-1$).
    """
    class_key, noise_key = jax.random.split(key)
    label = jax.random.randint(class_key, (), 0, num_classes)
    t = jnp.asarray(t, jnp.int32)
    signal = jax.nn.one_hot(label, num_classes)
    x = jnp.where(
        t < signal_length, signal, noise * jax.random.normal(jax.random.fold_in(noise_key, t), (num_classes,))
    )
    return x, jnp.where(t == horizon - 1, label, -1).astype(jnp.int32)


def last_step_loss(logits: jax.Array, target: jax.Array, horizon: int) -> jax.Array:
    """The step loss of the long-dependency task: the final cross-entropy, spread over the episode.

    Args:
        logits: the readout's logits ``[num_classes]``.
        target: the step's target: the class at the last step, $-1$ (no target) elsewhere.
        horizon: $T$, the number of steps of an episode.

    Returns:
        $T$ times ``cross_entropy(logits, target)`` where there is a target
        (``target >= 0``, the last step), $0$ elsewhere: the mean step loss of an episode
        is then the final cross-entropy.
    """
    return jnp.where(target >= 0, horizon * cross_entropy(logits, jnp.maximum(target, 0)), 0.0)


def long_dependency(
    horizon: int = 1000,
    num_classes: int = 4,
    signal_length: int | None = None,
    noise: float = 0.1,
    cell: str = "gilr-lstm",
    hidden: int = 32,
    num_layers: int = 1,
    timescale: float | None = None,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    chunk: int | None = PARALLEL_CHUNK,
):
    r"""Long-dependency classification after Martin & Cundy (2018).

    After their synthetic task of a dependency over up to a million steps: the class $k$
    (one of ``num_classes``) is shown by the first ``signal_length`` inputs
    (``one_hot(k)``), the rest of the ``horizon`` inputs are ``noise`` times $N(0, I)$,
    and the network's readout is scored at the last step only: the step loss is $0$ for
    $t < T - 1$ and $T$ times the cross-entropy of the logits at $t = T - 1$
    (``last_step_loss``), so the objective (mean step loss) is the final cross-entropy;
    $\ln K$ ($K$ = ``num_classes``) is chance. Every value comes from the episode key
    (``long_dependency_sequence``).

    Args:
        horizon: $T$, the number of steps of an episode (at least 2).
        num_classes: the number of classes (at least 2).
        signal_length: the number of steps that show the class, shorter than the horizon;
            ``None``: 1% of the horizon, at least 1, which keeps the task's difficulty about
            the same across horizons (with memories as long as the horizon a single shown
            step reaches the end scaled by about $1 / T$, and a GILR-LSTM was still at
            chance after 1,500 Adam steps at $T = 3000$, where 1% learned in about 200).
        noise: the scale of the other inputs, a finite float $\ge 0$.
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        num_layers: the number of stacked cells.
        timescale: the longest memory the gates start with (chrono init, ``get_cell``);
            ``None``: the horizon, for the cells that take one.
        seed: the seed of the initial weights (and, plus 10,000, of the held-out episodes).
        dtype: the weights' dtype.
        num_eval_episodes: the number of fixed held-out episodes ``evaluate`` averages over.
        chunk: the steps the parallel form runs at once (``build_network``); ``None``: all.

    Returns:
        ``(system, theta, evaluate)``: the ``unroll.System``, the initial weights
        (``network_theta``) and ``evaluate(theta)``, a jit-able dict of the final
        cross-entropy (``"objective"``) and ``"accuracy"`` (the argmax of the last logits
        is the class), in the parallel form when the cell has one (``gilr``,
        ``gilr-lstm``, ``lru``: then ``system.episode`` too).
    """
    horizon, num_classes, signal_length, hidden, num_layers, chunk = _check_long_dependency(
        horizon, num_classes, signal_length, noise, hidden, num_layers, chunk
    )
    if timescale is None and cell in TIMESCALE_CELLS:
        timescale = max(2.0, float(horizon))
    net = get_cell(cell, timescale)

    network = keyed_network(
        net,
        hidden,
        horizon,
        dtype,
        lambda key, t: long_dependency_step(key, t, horizon, num_classes, signal_length, noise),
        lambda theta, x: x.astype(dtype),
        lambda logits, y: last_step_loss(logits, y, horizon),
        num_layers,
        chunk,
    )
    theta = network_theta(net, jax.random.key(seed), num_classes, hidden, num_classes, dtype, num_layers)
    # the hit at the last step, per step of the episode: its mean * horizon
    accuracy = (lambda logits, y, t: (jnp.argmax(logits) == y) & (y >= 0), float(horizon))
    evaluate = network_evaluator(network, jax.random.key(seed + 10_000), num_eval_episodes, {"accuracy": accuracy})
    return network.system, theta, evaluate


def _check_long_dependency(horizon, num_classes, signal_length, noise, hidden, num_layers, chunk):
    """``long_dependency``'s arguments checked: ``(horizon, num_classes, signal_length, hidden,
    num_layers, chunk)``, ``signal_length`` defaulted (1% of the horizon, at least 1)."""
    horizon = check_positive_int(horizon, "horizon")
    num_classes = check_positive_int(num_classes, "num_classes")
    if chunk is not None:
        chunk = check_positive_int(chunk, "chunk", "It is the steps the parallel form runs at once (None: all).")
    signal_length = max(1, horizon // 100) if signal_length is None else signal_length
    signal_length = check_positive_int(signal_length, "signal_length")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    if horizon < 2 or num_classes < 2:
        raise BadValue(
            f"`horizon`={horizon} and `num_classes`={num_classes} must both be at least 2 (a class to remember "
            "over at least one step); e.g. horizon=1000, num_classes=4."
        )
    if signal_length >= horizon:
        raise BadValue(
            f"`signal_length`={signal_length} must be shorter than `horizon`={horizon} (the class is shown at the "
            "start and asked for at the end); e.g. signal_length=1."
        )
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
        raise BadValue(f"`noise`={noise!r} must be a finite float >= 0 (the noise inputs' scale), e.g. noise=0.1.")
    return horizon, num_classes, signal_length, hidden, num_layers, chunk


def long_dependency_setup(horizon: int = 1000, cell: str = "gilr-lstm", hidden: int = 16, num_layers: int = 1) -> Task:
    r"""Long-dependency classification (Martin & Cundy 2018): the class of the first of
    ``horizon`` inputs (4 classes, noise 0.1), read out at the last step.

    Args:
        horizon: $T$, the steps the class is remembered over (at least 2).
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        num_layers: the number of stacked cells.

    Returns:
        The ``unroll.Task`` behind ``unroll compare long-dependency``; chance is $\ln 4$.
    """
    made = long_dependency(horizon=horizon, num_classes=4, cell=cell, hidden=hidden, num_layers=num_layers)
    reference = {
        "objective": "final-step cross-entropy (nats) on 64 held-out sequences; accuracy of the final argmax",
        "chance_loss": float(np.log(4)),
    }
    return network_setup(
        "long-dependency", made, reference, 300, min(10, horizon), cell=cell, hidden=hidden, num_layers=num_layers
    )
