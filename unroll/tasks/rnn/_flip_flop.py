"""The $n$-bit flip-flop (Sussillo & Barak 2013): hold the sign of each channel's last
pulse."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import check_positive_int
from unroll.task import Task
from unroll.tasks.rnn._cells import get_cell
from unroll.tasks.rnn._network import build_network, check_num_layers, network_evaluator, network_theta
from unroll.tasks.rnn._setup import network_setup


def flip_flop_inputs(key, t, num_bits: int, pulse_probability: float):
    r"""Step ``t``'s input pulses of the flip-flop.

    Args:
        key: the episode's JAX random key (step ``t``'s pulses are drawn from
            ``fold_in(key, t)``).
        t: the step, an int (traced or not).
        num_bits: the number of channels.
        pulse_probability: the chance of a pulse per channel and step (its sign fair).

    Returns:
        The pulses in $\{-1, 0, +1\}$, int32 ``[num_bits]``.
    """
    k1, k2 = jax.random.split(jax.random.fold_in(key, t))
    pulse = jax.random.bernoulli(k1, pulse_probability, (num_bits,))
    sign = jnp.where(jax.random.bernoulli(k2, 0.5, (num_bits,)), 1, -1)
    return jnp.where(pulse, sign, 0).astype(jnp.int32)


def flip_flop_sequence(key, horizon: int, num_bits: int, pulse_probability: float, bits0=None):
    """The whole flip-flop stream of an episode at once.

    The index of each channel's last pulse is a running maximum (``lax.cummax``) of the
    pulse times, so there is no step loop; equal, value for value, to stepping
    ``flip_flop_inputs``.

    Args:
        key: the episode's JAX random key.
        horizon: $T$, the number of steps.
        num_bits: the number of channels.
        pulse_probability: the chance of a pulse per channel and step.
        bits0: the bits held before any pulse, int ``[num_bits]``; ``None``: all $+1$.

    Returns:
        ``(pulses [T, num_bits], targets [T, num_bits])``, ``targets[t, c]`` the last
        nonzero pulse of channel $c$ at or before $t$ (``bits0[c]`` before any).
    """
    pulses = jax.vmap(lambda t: flip_flop_inputs(key, t, num_bits, pulse_probability))(jnp.arange(horizon))
    times = jnp.where(pulses != 0, jnp.arange(horizon)[:, None], -1)
    last = jax.lax.cummax(times, axis=0)
    held = jnp.take_along_axis(pulses, jnp.maximum(last, 0), axis=0)
    bits0 = jnp.ones(num_bits, jnp.int32) if bits0 is None else bits0
    return pulses, jnp.where(last >= 0, held, bits0)


def flip_flop(
    num_bits: int = 3,
    horizon: int = 100,
    pulse_probability: float = 0.05,
    cell: str = "gru",
    hidden: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    num_layers: int = 1,
    timescale: float | None = None,
):
    """The ``num_bits``-bit flip-flop (Sussillo & Barak 2013).

    Each output must hold the sign of the last pulse on its channel ($+1$ before any).
    The step loss is the binary cross-entropy summed over channels (a logit per
    channel). The parallel form's targets are ``flip_flop_sequence``.

    Args:
        num_bits: the number of channels.
        horizon: the number of steps of an episode.
        pulse_probability: the chance of a pulse per channel and step, in $(0, 1]$.
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        seed: the seed of the initial weights (and, plus 10,000, of the held-out episodes).
        dtype: the weights' dtype.
        num_eval_episodes: the number of fixed held-out episodes ``evaluate`` averages over.
        num_layers: the number of stacked cells.
        timescale: the longest memory the gates start with (``get_cell``).

    Returns:
        ``(system, theta, evaluate)``: the ``unroll.System``, the initial weights
        (``network_theta``) and ``evaluate(theta)``, a jit-able dict of the mean step loss
        (``"objective"``) and the per-bit accuracy (``"bit_accuracy"``).
    """
    num_bits = check_positive_int(num_bits, "num_bits")
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    if not 0.0 < pulse_probability <= 1.0:
        raise BadValue(
            f"`pulse_probability`={pulse_probability!r} must lie in (0, 1]; it is the chance of a pulse per "
            "channel and step, e.g. pulse_probability=0.05."
        )
    net = get_cell(cell, timescale)

    def data_init(key):
        return key, jnp.ones(num_bits, jnp.int32)  # (episode key, the bits held so far)

    def data_step(data, t):
        key, bits = data
        pulses = flip_flop_inputs(key, t, num_bits, pulse_probability)
        bits = jnp.where(pulses != 0, pulses, bits)
        return pulses, bits, (key, bits)

    def data_sequence(data, horizon):
        key, bits = data
        return flip_flop_sequence(key, horizon, num_bits, pulse_probability, bits)

    def loss(logits, target):
        return jnp.sum(jax.nn.softplus(-target * logits))  # BCE with labels (1 + target) / 2

    network = build_network(
        net,
        hidden,
        horizon,
        dtype,
        data_init,
        data_step,
        lambda theta, x: x.astype(dtype),
        loss,
        data_sequence,
        num_layers,
    )
    theta = network_theta(net, jax.random.key(seed), num_bits, hidden, num_bits, dtype, num_layers)
    accuracy = (lambda logits, y, t: jnp.mean(jnp.sign(logits) == y), 1.0)
    evaluate = network_evaluator(network, jax.random.key(seed + 10_000), num_eval_episodes, {"bit_accuracy": accuracy})
    return network.system, theta, evaluate


def flip_flop_setup(horizon: int = 100, cell: str = "gru", hidden: int = 32, num_layers: int = 1) -> Task:
    r"""3-bit flip-flop: hold the sign of each channel's last pulse.

    Args:
        horizon: the steps of an episode, each with a pulse on a channel at probability 0.05.
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        num_layers: the number of stacked cells.

    Returns:
        What ``unroll compare flip-flop`` runs: the ``unroll.Task`` of 3 channels, its chance loss
        $3 \ln 2$ in the reference.
    """
    made = flip_flop(
        num_bits=3, horizon=horizon, pulse_probability=0.05, cell=cell, hidden=hidden, num_layers=num_layers
    )
    reference = {
        "objective": "mean step binary cross-entropy (nats, summed over 3 bits) on 64 held-out sequences",
        "chance_loss": 3 * float(np.log(2)),
    }
    return network_setup("flip-flop", made, reference, 300, 10, cell=cell, hidden=hidden, num_layers=num_layers)
