"""Ready systems with known facts."""

from unroll.tasks._hyper import lr_schedule, lr_schedule_grid, mlp_hyperparameters, regression_data
from unroll.tasks._influence import (
    THETA_INIT,
    influence_balancing,
    influence_gap_fn,
    influence_loss,
    influence_loss_fn,
    influence_optimum,
)
from unroll.tasks._lorenz import TRUE_PARAMS, lorenz, lorenz_trajectory
from unroll.tasks._lorenz import rk4_step as lorenz_rk4
from unroll.tasks.lopt import adam_baseline, adam_system, learned_optimizer, sgd_theta
from unroll.tasks.rnn import (
    CELLS,
    Corpus,
    char_lm,
    copy_memoryless_loss,
    copy_sequence,
    copy_task,
    flip_flop,
    flip_flop_inputs,
    flip_flop_sequence,
    long_dependency,
    long_dependency_sequence,
    python_docs_corpus,
)

__all__ = [
    "CELLS",
    "Corpus",
    "adam_baseline",
    "adam_system",
    "learned_optimizer",
    "mlp_hyperparameters",
    "sgd_theta",
    "THETA_INIT",
    "TRUE_PARAMS",
    "char_lm",
    "copy_memoryless_loss",
    "copy_sequence",
    "copy_task",
    "flip_flop",
    "flip_flop_inputs",
    "flip_flop_sequence",
    "influence_balancing",
    "influence_gap_fn",
    "influence_loss",
    "influence_loss_fn",
    "influence_optimum",
    "long_dependency",
    "long_dependency_sequence",
    "lorenz",
    "lorenz_rk4",
    "lorenz_trajectory",
    "lr_schedule",
    "lr_schedule_grid",
    "python_docs_corpus",
    "regression_data",
]
