"""Streaming a run's metrics to the tools people watch them in: ``train(..., callback=...)``.

    theta, history = unroll.train(est, optimizer, theta, key, 10_000, callback=unroll.callbacks.tensorboard("runs/tb"))

then ``tensorboard --logdir runs/tb``. A callback is any ``fn(step, metrics)`` (see
``unroll.train``); this module has ready ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from unroll._errors import BadType, MissingExtra

__all__ = ["tensorboard"]


def tensorboard(logdir: str, every_seed: bool = True) -> Callable[[int, dict], None]:
    """A ``train`` callback that writes every scalar metric to TensorBoard event files in ``logdir``.

    Each per-step entry (``loss``, ``grad_norm``, ``steps``, an estimator's own ``info``)
    is the scalar of that tag at global step ``metrics["step"]`` (outer steps done), and
    each evaluation ``eval/<name>`` at its ``eval_step``. With a seed axis
    (``num_seeds``), seed ``i`` goes to ``logdir/seed<i>`` (TensorBoard overlays them as
    runs), or only their mean to ``logdir`` with ``every_seed=False``. Entries that are not
    one scalar per step (vectors) are left out. The files are flushed at every call; the
    returned function's ``close()`` closes them.

    Needs tensorboardX (``pip install 'unroll[log]'``).

    Args:
      logdir: the folder of the event files.
      every_seed: with a seed axis, write each seed to `logdir/seed<i>` (True) or only their mean to `logdir`.

    Returns:
      The callback `fn(step, metrics)`, for `train(..., callback=...)`; its `close()` closes the files.

    Raises:
      MissingExtra: tensorboardX is not installed.
    """
    if not isinstance(logdir, (str, os.PathLike)) or not str(logdir):
        raise BadType(f"`logdir`={logdir!r} must be a folder path, e.g. tensorboard('runs/tb').")
    try:
        from tensorboardX import SummaryWriter
    except ImportError as err:
        raise MissingExtra(
            "unroll.callbacks.tensorboard writes with tensorboardX, which is not installed; "
            "pip install 'unroll[log]' (or pip install tensorboardX)."
        ) from err
    writers: dict[str, SummaryWriter] = {}
    shape = {"seeds": None}  # whether there is a seed axis: the window loss is [seeds, k] (set at the first call)

    def writer(folder: str) -> SummaryWriter:
        if folder not in writers:
            writers[folder] = SummaryWriter(logdir=folder)
        return writers[folder]

    def log(step: int, metrics: dict) -> None:
        if shape["seeds"] is None:
            reference = metrics.get("loss", metrics.get("eval/objective"))
            shape["seeds"] = reference is not None and np.ndim(reference) == 2
        seeds = shape["seeds"]
        for name, values in metrics.items():
            if name in ("step", "eval_step"):
                continue
            at = metrics["eval_step"] if name.startswith("eval/") else metrics["step"]
            values = np.asarray(values)
            numeric = np.issubdtype(values.dtype, np.number) or values.dtype == bool
            if values.ndim != 1 + seeds or not numeric:
                continue
            if not seeds:
                rows = {str(logdir): values}
            elif every_seed:
                rows = {os.path.join(str(logdir), f"seed{i}"): row for i, row in enumerate(values)}
            else:
                rows = {str(logdir): values.mean(axis=0)}
            for folder, row in rows.items():
                w = writer(folder)
                for s, v in zip(at, row):
                    w.add_scalar(name, float(v), int(s))
        for w in writers.values():
            w.flush()

    def close() -> None:
        for w in writers.values():
            w.close()

    log.close = close
    return log
