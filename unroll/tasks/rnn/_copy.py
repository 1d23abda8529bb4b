"""The copy task (Arjovsky et al. 2016): remember a few symbols over a delay, then
recall them in order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import check_positive_int
from unroll.task import Task
from unroll.tasks.rnn._cells import get_cell
from unroll.tasks.rnn._network import (
    check_num_layers,
    cross_entropy,
    keyed_network,
    network_evaluator,
    network_theta,
)
from unroll.tasks.rnn._setup import network_setup


def copy_sequence(key, t, length: int, delay: int, num_symbols: int):
    r"""Input and target token at step ``t`` of the copy task (Arjovsky et al. 2016).

    Tokens: ``0`` blank, ``1..num_symbols`` symbols, ``num_symbols + 1`` the "go" marker.
    Steps $0, \dots, L - 1$ ($L$ = ``length``, $D$ = ``delay``) show random symbols,
    then blanks, with "go" at step $L + D - 1$; the target is blank until step $L + D$,
    from where the $L$ symbols are to be recalled in order. Horizon $2 L + D$.

    Args:
        key: the episode's JAX random key (symbol $i$ is drawn from ``fold_in(key, i)``).
        t: the step, an int (traced or not).
        length: $L$, the number of symbols to remember.
        delay: $D$, the steps between the last symbol shown and the first recalled.
        num_symbols: the number of distinct symbols.

    Returns:
        ``(x, y)``, the int input and target tokens of step ``t``.
    """
    t = jnp.asarray(t, jnp.int32)
    symbol = lambda i: 1 + jax.random.randint(jax.random.fold_in(key, jnp.maximum(i, 0)), (), 0, num_symbols)
    shown = t < length
    go = t == length + delay - 1
    x = jnp.where(shown, symbol(t), jnp.where(go, num_symbols + 1, 0))
    recall = t >= length + delay
    y = jnp.where(recall, symbol(t - length - delay), 0)
    return x, y


def copy_memoryless_loss(length: int, delay: int, num_symbols: int) -> float:
    r"""The mean step loss of the best predictor without memory.

    It predicts blank with certainty until recall, then uniform symbols:
    $L \ln(S) / (2 L + D)$ for $L$ = ``length``, $D$ = ``delay``, $S$ = ``num_symbols``.

    Args:
        length: $L$, the number of symbols to remember.
        delay: $D$, the steps between the last symbol shown and the first recalled.
        num_symbols: $S$, the number of distinct symbols.

    Returns:
        The loss (nats per step) a network has to beat to show memory.
    """
    return length * float(np.log(num_symbols)) / (2 * length + delay)


def copy_task(
    length: int = 10,
    delay: int = 20,
    num_symbols: int = 8,
    cell: str = "gru",
    hidden: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 64,
    num_layers: int = 1,
    timescale: float | None = None,
):
    """The copy task: remember ``length`` symbols over ``delay`` steps, then recall them.

    The horizon is $2 L + D$ ($L$ = ``length``, $D$ = ``delay``; ``copy_sequence``), the
    step loss the cross-entropy of the readout against the step's target token. With a
    cell that has a parallel form (``gilr``, ``gilr-lstm``, ``lru``) the system has
    ``episode``.

    Args:
        length: $L$, the number of symbols to remember.
        delay: $D$, the steps between the last symbol shown and the first recalled.
        num_symbols: the number of distinct symbols.
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
        (``"objective"``; ``copy_memoryless_loss`` is the loss to beat) and
        ``"recall_accuracy"``.
    """
    length = check_positive_int(length, "length")
    delay = check_positive_int(delay, "delay")
    num_symbols = check_positive_int(num_symbols, "num_symbols")
    hidden = check_positive_int(hidden, "hidden")
    num_layers = check_num_layers(num_layers)
    net = get_cell(cell, timescale)
    vocab = num_symbols + 2
    horizon = 2 * length + delay

    network = keyed_network(
        net,
        hidden,
        horizon,
        dtype,
        lambda key, t: copy_sequence(key, t, length, delay, num_symbols),
        lambda theta, x: jax.nn.one_hot(x, vocab, dtype=dtype),
        cross_entropy,
        num_layers,
    )
    theta = network_theta(net, jax.random.key(seed), vocab, hidden, num_symbols + 1, dtype, num_layers)
    # hits over the recall steps, per step of the whole episode: their mean * horizon / length
    recall = (lambda logits, y, t: (jnp.argmax(logits) == y) & (t >= length + delay), horizon / length)
    evaluate = network_evaluator(network, jax.random.key(seed + 10_000), num_eval_episodes, {"recall_accuracy": recall})
    return network.system, theta, evaluate


def copy_setup(
    horizon: int | None = None, length: int = 5, cell: str = "gru", hidden: int = 32, num_layers: int = 1
) -> Task:
    """Copy task: recall 5 symbols (of 4) after a delay; horizon = 2 * length + delay.

    Args:
        horizon: the episode's length, $2 L + D$ for $L$ = ``length`` and the delay $D$
            (at least 1); ``None``: a delay of 10.
        length: $L$, the number of symbols to remember.
        cell: the cell's name (``get_cell``).
        hidden: the width of each layer's state.
        num_layers: the number of stacked cells.

    Returns:
        The ``unroll.Task`` of ``unroll compare copy``, whose reference has the memoryless loss to beat.
    """
    delay = 10 if horizon is None else horizon - 2 * length
    if delay < 1:
        raise BadValue(f"`horizon`={horizon} must exceed 2 * length = {2 * length} for the copy task.")
    made = copy_task(length=length, delay=delay, num_symbols=4, cell=cell, hidden=hidden, num_layers=num_layers)
    reference = {
        "objective": "mean step cross-entropy (nats) on 64 held-out sequences",
        "memoryless_loss": copy_memoryless_loss(length, delay, 4),
    }
    return network_setup("copy", made, reference, 300, 5, cell=cell, hidden=hidden, num_layers=num_layers)
