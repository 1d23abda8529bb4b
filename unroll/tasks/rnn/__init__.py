"""Recurrent-network training tasks: the copy task, 3-bit flip-flop, a character
language model and a long-dependency classification, with a choice of cell (tanh,
GRU, LSTM, LRU-style diagonal, GILR, GILR-LSTM) and of depth (``num_layers``).

Every task is an ``unroll.System`` whose theta is ``{"cell": ..., "readout": ...}``
(the network's weights; ``"cell"`` a tuple of per-layer params when stacked) and whose
episode is one pass over a sequence; the step loss is the cross-entropy (nats) of the
readout's logits against that step's target. No sequence is stored in the state: the
copy, flip-flop and long-dependency sequences are drawn step by step from the episode
key (``fold_in(key, t)``), and the language model reads the corpus at an episode
offset, so the state is the cell's state plus an int or a key (no influence, tangent or
perturbation is spent on data).

Cells whose recurrence is linear in the state (``lru``, ``gilr``, ``gilr-lstm``: gates
that read only the input) have a parallel form over time (``Cell.sequence``, by
``unroll.parallel.linear_recurrence``; Martin & Cundy 2018). Every task also draws its
whole data stream at once (no step loop), so with those cells its system has
``episode``, the per-step losses in parallel over time, equal to stepping.

Each constructor returns ``(system, theta, evaluate)``: ``evaluate(theta)`` is a
jit-able dict of metrics on fixed held-out episodes (``"objective"`` first), computed
in the parallel form where there is one. The ``*_setup`` functions are the tasks as
``unroll compare`` runs them (``unroll.Task``).
"""

from unroll.tasks.rnn._cells import CELLS, DEFAULT_TIMESCALE, TIMESCALE_CELLS, Cell, get_cell
from unroll.tasks.rnn._char_lm import Corpus, char_lm, char_lm_setup, python_docs_corpus
from unroll.tasks.rnn._copy import copy_memoryless_loss, copy_sequence, copy_setup, copy_task
from unroll.tasks.rnn._flip_flop import flip_flop, flip_flop_inputs, flip_flop_sequence, flip_flop_setup
from unroll.tasks.rnn._long_dependency import (
    last_step_loss,
    long_dependency,
    long_dependency_sequence,
    long_dependency_setup,
    long_dependency_step,
)
from unroll.tasks.rnn._network import PARALLEL_CHUNK, Network, cross_entropy, network_theta
from unroll.tasks.rnn._setup import DEFAULT_ESTIMATORS

__all__ = [
    "CELLS",
    "Cell",
    "Corpus",
    "DEFAULT_ESTIMATORS",
    "DEFAULT_TIMESCALE",
    "Network",
    "PARALLEL_CHUNK",
    "TIMESCALE_CELLS",
    "char_lm",
    "char_lm_setup",
    "copy_memoryless_loss",
    "copy_sequence",
    "copy_setup",
    "copy_task",
    "cross_entropy",
    "flip_flop",
    "flip_flop_inputs",
    "flip_flop_sequence",
    "flip_flop_setup",
    "get_cell",
    "last_step_loss",
    "long_dependency",
    "long_dependency_sequence",
    "long_dependency_setup",
    "long_dependency_step",
    "network_theta",
    "python_docs_corpus",
]
