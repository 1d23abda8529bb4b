"""A deliberate public surface: every public module says what it exports (`__all__`),
everything it exports has a docstring and an API-reference entry, it exports nothing else,
and no module of the package imports another's private name.

Public modules are those with no leading underscore anywhere in their dotted path;
the others (`unroll._engine`, `unroll.tasks.rnn._cells`, ...) are internal.
"""

import ast
import importlib
import inspect
import os
import pkgutil

import pytest

import unroll
from tests.test_docs import REFERENCE, entries, markdown_files, resolve

PACKAGE = os.path.dirname(unroll.__file__)


def all_modules() -> list[str]:
    names = ["unroll"]
    for info in pkgutil.walk_packages(unroll.__path__, "unroll."):
        names.append(info.name)
    return sorted(names)


PUBLIC = [name for name in all_modules() if not any(part.startswith("_") for part in name.split("."))]


def documented_objects():
    """What the API reference renders: each entry's object and, for a module entry, its `__all__`."""
    found = []
    for entry in entries(markdown_files(REFERENCE)):
        obj = resolve(entry)
        found.append(obj)
        if inspect.ismodule(obj):
            found += [getattr(obj, name) for name in getattr(obj, "__all__", [])]
    return found


DOCUMENTED = documented_objects()


def _source_names(module) -> set[str]:
    """The public names a module's own source binds at top level: its functions, classes and
    assignments (not its imports)."""
    if not getattr(module, "__file__", None) or not module.__file__.endswith(".py"):
        return set()
    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


@pytest.mark.parametrize("name", PUBLIC)
def test_a_public_module_exports_exactly_its_all_each_documented(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} is public (no leading underscore) but has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ names something twice"
    undeclared = sorted(_source_names(module) - set(exported))
    assert not undeclared, (
        f"{name} defines public names not in its __all__: {', '.join(undeclared)}; add them to __all__ "
        "(with a docstring and a reference entry) or make them private (a leading underscore, or a private module)"
    )
    for attr in exported:
        obj = getattr(module, attr)
        if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            assert (inspect.getdoc(obj) or "").strip(), f"{name}.{attr} has no docstring"
            assert any(obj is doc for doc in DOCUMENTED), (
                f"{name}.{attr} has no API reference entry: add '::: {name}.{attr}' to a page under docs/reference/ "
                f"(or '::: {name}' there, which renders its __all__)"
            )


def test_no_module_imports_another_modules_private_name():
    bad = []
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unroll"):
                    bad += [
                        f"{os.path.relpath(path, PACKAGE)}: from {node.module} import {alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_")
                    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
