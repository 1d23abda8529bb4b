"""unroll: gradient estimators for long unrolled computations, behind one interface.

Re-exports only: each name lives in the module that holds its concept (the layout is
in the README and docs/concepts.md).
"""

from unroll import (
    builder as builder,
)
from unroll import (
    callbacks as callbacks,
)
from unroll import (
    checkpointing as checkpointing,
)
from unroll import (
    contract as contract,
)
from unroll import (
    diagnostics as diagnostics,
)
from unroll import (
    jacobians as jacobians,
)
from unroll import (
    parallel as parallel,
)
from unroll import (
    registry as registry,
)
from unroll import (
    resume as resume,
)
from unroll import (
    sharding as sharding,
)
from unroll import (
    tasks as tasks,
)
from unroll._exact import episode_loss as episode_loss
from unroll._exact import exact_gradient as exact_gradient
from unroll._moved import install as _install_moved
from unroll._system import System as System
from unroll._task_loader import load_task as load_task
from unroll.advisor import Advice as Advice
from unroll.advisor import advise as advise
from unroll.comparison import compare as compare
from unroll.contract import Estimate as Estimate
from unroll.contract import Estimator as Estimator
from unroll.contract import WindowState as WindowState
from unroll.estimators.bptt import full_bptt as full_bptt
from unroll.estimators.bptt import truncated_bptt as truncated_bptt
from unroll.estimators.checkpointed import checkpointed_bptt as checkpointed_bptt
from unroll.estimators.dni import (
    Synthesizer as Synthesizer,
)
from unroll.estimators.dni import (
    dni as dni,
)
from unroll.estimators.dni import (
    linear_synthesizer as linear_synthesizer,
)
from unroll.estimators.dni import (
    mlp_synthesizer as mlp_synthesizer,
)
from unroll.estimators.evolution import es as es
from unroll.estimators.evolution import nres as nres
from unroll.estimators.evolution import pes as pes
from unroll.estimators.evolution import truncated_es as truncated_es
from unroll.estimators.forward_gradient import forward_gradient as forward_gradient
from unroll.estimators.gpes import gpes as gpes
from unroll.estimators.parallel_bptt import parallel_bptt as parallel_bptt
from unroll.estimators.rtrl import rtrl as rtrl
from unroll.estimators.rtrl import snap as snap
from unroll.estimators.uoro import uoro as uoro
from unroll.jacobians import StepJacobian as StepJacobian
from unroll.sharding import shard as shard
from unroll.task import Task as Task
from unroll.training import TrainingInterrupted as TrainingInterrupted
from unroll.training import train as train

_install_moved()


def __getattr__(name: str):
    """`unroll.logging`, moved in 0.3, is refused with its new name."""
    if name == "logging":
        raise AttributeError("`unroll.logging` moved in unroll 0.3: use `unroll.callbacks` (`tensorboard`).")
    raise AttributeError(f"module 'unroll' has no attribute {name!r}")


__version__ = "0.3.0"

__all__ = [
    "Advice",
    "Estimate",
    "Estimator",
    "StepJacobian",
    "Synthesizer",
    "System",
    "Task",
    "TrainingInterrupted",
    "WindowState",
    "advise",
    "builder",
    "callbacks",
    "checkpointed_bptt",
    "checkpointing",
    "compare",
    "contract",
    "diagnostics",
    "dni",
    "episode_loss",
    "es",
    "exact_gradient",
    "forward_gradient",
    "full_bptt",
    "gpes",
    "jacobians",
    "linear_synthesizer",
    "load_task",
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
