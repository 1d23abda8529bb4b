"""Module paths that 0.3 moved: importing one fails at once with a message naming the new
home (CHANGELOG.md, "0.3"), rather than a bare "No module named"."""

from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "unroll.train": "`unroll.training` (the outer loop; `unroll.train` is the function itself) and "
    "`unroll.train_step` (`make_train_step`, `TrainState`)",
    "unroll.logging": "`unroll.callbacks` (`tensorboard`)",
    "unroll.window": "`unroll.contract` (`Estimator`, `Estimate`, `Rule`, `WindowState`, ...) and `unroll.builder` "
    "(`windowed`, `summed`, `backprop`, `plain_rule`)",
    "unroll.system": "`unroll.System` (the module is internal now)",
    "unroll.exact": "`unroll.exact_gradient` and `unroll.episode_loss` (the module is internal now)",
    "unroll.tasks.lorenz": "`unroll.tasks.lorenz` (the function; its module is internal now)",
    "unroll.tasks.influence": "`unroll.tasks` (`influence_balancing`, `influence_loss`, ...; the module is internal now)",
    "unroll.tasks.hyper": "`unroll.tasks` (`lr_schedule`, `mlp_hyperparameters`, ...; the module is internal now)",
    "unroll.estimators.parallel": "`unroll.estimators.parallel_bptt` (`unroll.parallel_bptt`); "
    "`unroll.parallel` holds the recurrence solvers",
}


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Refuses the moved paths with the new one; finds nothing else."""

    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            raise ModuleNotFoundError(f"`{fullname}` moved in unroll 0.3: use {MOVED[fullname]}.", name=fullname)
        return None


def install() -> None:
    """Puts the finder first on `sys.meta_path`, once."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
