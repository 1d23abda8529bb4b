"""Where a task comes from: a built-in name, an installed package's entry point, or the
user's own code (``path/to/file.py:NAME``, ``package.module:NAME``).

``NAME`` is an ``unroll.Task`` or a function that returns one; task options (the CLI's
``--task-option key=value`` and ``[task_options]`` in ``--config``) are its keyword
arguments. An installed package adds tasks under the entry-point group ``unroll.tasks``
(``name = "package.module:NAME"`` in its ``[project.entry-points."unroll.tasks"]``), which
``unroll list`` shows and ``unroll compare name`` runs.

Bad references (a missing file, module or attribute, an object that is not a task, an
option the task does not take) raise ``ValueError`` or ``TypeError`` naming the fix; an
exception raised inside the user's own code propagates unchanged, with its traceback.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from unroll._errors import BadType, BadValue
from unroll.task import Task
from unroll.tasks._hyper import DEFAULT_ESTIMATORS as HYPER_ESTIMATORS
from unroll.tasks._hyper import lr_schedule_setup, mlp_hyper_setup
from unroll.tasks._influence import DEFAULT_ESTIMATORS as INFLUENCE_ESTIMATORS
from unroll.tasks._influence import influence_balancing_setup
from unroll.tasks._lorenz import DEFAULT_ESTIMATORS as LORENZ_ESTIMATORS
from unroll.tasks._lorenz import lorenz_setup
from unroll.tasks.lopt import DEFAULT_ESTIMATORS as LOPT_ESTIMATORS
from unroll.tasks.lopt import lopt_digits_setup, lopt_quadratic_setup
from unroll.tasks.rnn import DEFAULT_ESTIMATORS as RNN_ESTIMATORS
from unroll.tasks.rnn import char_lm_setup, copy_setup, flip_flop_setup, long_dependency_setup

ENTRY_POINT_GROUP = "unroll.tasks"

# the built-in tasks: name -> function(**options) -> Task
TASKS: dict[str, Callable[..., Task]] = {
    "influence-balancing": influence_balancing_setup,
    "copy": copy_setup,
    "flip-flop": flip_flop_setup,
    "char-lm": char_lm_setup,
    "long-dependency": long_dependency_setup,
    "lorenz": lorenz_setup,
    "lr-schedule": lr_schedule_setup,
    "mlp-hyper": mlp_hyper_setup,
    "lopt-digits": lopt_digits_setup,
    "lopt-quadratic": lopt_quadratic_setup,
}

# the estimators `unroll compare NAME` runs on a built-in task when none are named (each task module's list)
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    **INFLUENCE_ESTIMATORS,
    **RNN_ESTIMATORS,
    **LORENZ_ESTIMATORS,
    **HYPER_ESTIMATORS,
    **LOPT_ESTIMATORS,
}


class LoadedTask(NamedTuple):
    """A task and how it was made."""

    task: Task
    options: dict  # the keyword arguments its function was called with
    source: str  # "built-in", "entry point package.module:NAME", "file /abs/path.py:NAME", "module pkg.mod:NAME"


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' tasks (group ``unroll.tasks``), by name; a built-in name wins."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in found if ep.name not in TASKS}


def load_task(reference: Any, options: dict | None = None) -> LoadedTask:
    """The task ``reference`` names, made with ``options``.

    Args:
      reference: an ``unroll.Task``; a built-in name (``unroll list``); an entry point's name; or
        ``path/to/file.py:NAME`` / ``package.module:NAME``, where ``NAME`` is a ``Task`` or a
        function returning one (a file's own folder, and for the module form the working
        directory, are importable while it loads, as with ``python file.py`` and ``python -m``).
      options: keyword arguments for the function (a ``Task`` takes none).

    Returns:
      ``LoadedTask(task, options, source)``.
    """
    options = dict(options or {})
    if isinstance(reference, Task):
        if options:
            raise BadValue(
                f"task options {sorted(options)} were given with a ready Task; pass them to the function that "
                "builds it instead."
            )
        return LoadedTask(reference, {}, "a Task object")
    if not isinstance(reference, str):
        raise BadType(
            f"the task must be an unroll.Task or a name (built-in, 'file.py:NAME' or 'package.module:NAME'), "
            f"got {type(reference).__name__}."
        )
    if reference in TASKS:
        return LoadedTask(_made(TASKS[reference], options, reference), options, "built-in")
    plugins = entry_points()
    if reference in plugins:
        found = plugins[reference]
        return _loaded(found.load(), options, reference, f"entry point {found.value}")
    if ":" not in reference:
        known = ", ".join([*TASKS, *plugins])
        hint = " (a file's task is named file.py:NAME)" if reference.endswith(".py") else ""
        raise BadValue(
            f"unknown task {reference!r}{hint}; choose from {known}, or point at your own: "
            "path/to/file.py:NAME or package.module:NAME (see `unroll list`)."
        )
    where, attribute = reference.rsplit(":", 1)
    if not attribute.isidentifier():
        raise BadValue(f"task {reference!r}: {attribute!r} after ':' is not a Python name; write FILE.py:NAME.")
    if where.endswith(".py") or os.sep in where or "/" in where:
        module, source = _import_file(where, reference), f"file {os.path.abspath(where)}:{attribute}"
    else:
        module, source = _import_module(where, reference), f"module {reference}"
    if not hasattr(module, attribute):
        defined = sorted(n for n, v in vars(module).items() if not n.startswith("_") and _defines_task(v, module))
        raise BadValue(
            f"task {reference!r}: {where} has no attribute {attribute!r}; it defines "
            f"{', '.join(defined) if defined else 'no Task and no function'}."
        )
    return _loaded(getattr(module, attribute), options, reference, source)


def _defines_task(value, module) -> bool:
    """A Task, or a function defined in ``module`` itself (not one it imports)."""
    return isinstance(value, Task) or (inspect.isfunction(value) and value.__module__ == module.__name__)


def _loaded(found, options: dict, label: str, source: str) -> LoadedTask:
    if isinstance(found, Task):
        if options:
            raise BadValue(
                f"task {label!r} is a Task, which takes no options (got {', '.join(sorted(options))}); make it a "
                "function that returns the Task and takes them as keyword arguments."
            )
        return LoadedTask(found, {}, source)
    if not callable(found):
        raise BadType(
            f"task {label!r} is a {type(found).__name__}, not an unroll.Task or a function returning one; "
            "define e.g. `def make(horizon=100): return unroll.Task(system, theta)`."
        )
    return LoadedTask(_made(found, options, label), options, source)


def _made(make: Callable, options: dict, label: str) -> Task:
    """``make(**options)``, checked to be a Task; an option ``make`` does not take fails first."""
    check_options(make, options, label)
    task = make(**options)  # the user's own code: its exceptions keep their traceback
    if not isinstance(task, Task):
        raise BadType(
            f"task {label!r} returned {type(task).__name__}, not an unroll.Task; return "
            "unroll.Task(system, theta, ...)."
        )
    return task


def task_options(make: Callable) -> dict:
    """``{option: default}`` of a task function (``inspect.Parameter.empty`` where required)."""
    return {name: p.default for name, p in inspect.signature(make).parameters.items()}


def check_options(make: Callable, options: dict, label: str) -> None:
    """``make`` takes these keyword arguments: else a ValueError naming the ones it takes."""
    try:
        inspect.signature(make).bind(**options)
    except TypeError as err:
        takes = ", ".join(
            f"{n}={d!r}" if d is not inspect.Parameter.empty else n for n, d in task_options(make).items()
        )
        raise BadValue(
            f"task {label!r}: {err}; its options: {takes or 'none'} (see `unroll list`, --task-option KEY=VALUE)."
        ) from None


_LOADED_FILES: set[str] = set()  # the module names task files were loaded under


def _import_file(path: str, reference: str):
    if not os.path.isfile(path):
        raise BadValue(f"task {reference!r}: no such file {path!r} (relative to {os.getcwd()}).")
    path = os.path.abspath(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    # its own name where free (or held by an earlier task file of the same name), else one of its own
    free = stem not in sys.modules or stem in _LOADED_FILES
    name = stem if stem.isidentifier() and free else f"_unroll_task_files.{stem}"
    _LOADED_FILES.add(name)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses and pickling look a class's module up there)
    folder = os.path.dirname(path)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # its sibling modules import, as under `python file.py`
    try:
        spec.loader.exec_module(module)  # the user's code: its exceptions keep their traceback
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_module(name: str, reference: str):
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            raise BadValue(
                f"task {reference!r}: no module named {err.name!r} (looked in the working directory and the "
                "installed packages); for a file write path/to/file.py:NAME."
            ) from None
        raise  # a module the user's own module imports: their traceback
