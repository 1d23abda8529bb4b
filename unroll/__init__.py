"""unroll: gradient estimators for long unrolled computations, behind one interface."""

from unroll import checkpointing, diagnostics, resume, sharding, tasks
from unroll.estimators.bptt import checkpointed_bptt, full_bptt, truncated_bptt
from unroll.estimators.dni import Synthesizer, dni, linear_synthesizer, mlp_synthesizer
from unroll.estimators.evolution import es, nres, pes, truncated_es
from unroll.estimators.forward import forward_gradient, rtrl, snap, uoro
from unroll.exact import episode_loss, exact_gradient
from unroll.sharding import shard
from unroll.system import System
from unroll.train import TrainingInterrupted, train
from unroll.window import Estimator

__version__ = "0.1.0"

__all__ = [
    "Estimator",
    "Synthesizer",
    "System",
    "TrainingInterrupted",
    "checkpointed_bptt",
    "checkpointing",
    "diagnostics",
    "dni",
    "episode_loss",
    "es",
    "exact_gradient",
    "forward_gradient",
    "full_bptt",
    "linear_synthesizer",
    "mlp_synthesizer",
    "nres",
    "pes",
    "resume",
    "rtrl",
    "shard",
    "sharding",
    "snap",
    "tasks",
    "train",
    "truncated_bptt",
    "truncated_es",
    "uoro",
]
