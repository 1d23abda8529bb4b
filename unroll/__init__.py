"""unroll: gradient estimators for long unrolled computations, behind one interface."""

from unroll import checkpointing, diagnostics, logging, parallel, registry, resume, sharding, tasks
from unroll.advisor import Advice, advise
from unroll.comparison import compare
from unroll.estimators.bptt import full_bptt, truncated_bptt
from unroll.estimators.checkpointed import checkpointed_bptt
from unroll.estimators.dni import Synthesizer, dni, linear_synthesizer, mlp_synthesizer
from unroll.estimators.evolution import es, nres, pes, truncated_es
from unroll.estimators.forward_gradient import forward_gradient
from unroll.estimators.gpes import gpes
from unroll.estimators.parallel import parallel_bptt
from unroll.estimators.rtrl import rtrl, snap
from unroll.estimators.uoro import uoro
from unroll.exact import episode_loss, exact_gradient
from unroll.sharding import shard
from unroll.system import System
from unroll.task import Task
from unroll.train import TrainingInterrupted, train
from unroll.window import Estimate, Estimator, WindowState

__version__ = "0.1.0"

__all__ = [
    "Advice",
    "Estimate",
    "Estimator",
    "Synthesizer",
    "System",
    "Task",
    "TrainingInterrupted",
    "WindowState",
    "advise",
    "checkpointed_bptt",
    "checkpointing",
    "compare",
    "diagnostics",
    "dni",
    "episode_loss",
    "es",
    "exact_gradient",
    "forward_gradient",
    "full_bptt",
    "gpes",
    "linear_synthesizer",
    "logging",
    "mlp_synthesizer",
    "nres",
    "parallel",
    "parallel_bptt",
    "pes",
    "registry",
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
