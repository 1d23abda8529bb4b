"""The layout tree in the README (which docs/concepts.md includes) is the package's: every
module and package under unroll/ appears in it, and it names nothing that is not there."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "unroll")
ENTRY = re.compile(r"^( *)([\w.]+/|[\w.]+\.py)(?:\s|$)")


def tree_paths(text: str) -> set[str]:
    """The paths a tree of `name.py` / `folder/` lines names, nesting by indentation (two
    spaces a level); description lines (a deeper indent, no such name first) are skipped."""
    block = text.split("<!-- --8<-- [start:layout] -->", 1)[1].split("<!-- --8<-- [end:layout] -->", 1)[0]
    paths, stack = set(), []
    for line in block.splitlines():
        match = ENTRY.match(line)
        if not match or line.strip().startswith("```"):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        if depth > len(stack):  # deeper than a folder's children: a description's continuation
            continue
        stack = stack[:depth]
        path = "/".join(stack + [name.rstrip("/")])
        paths.add(path)
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def package_paths() -> set[str]:
    """`unroll/`'s modules and packages, as the tree names them: a package's own
    `__init__.py` is the folder itself, except the top level's."""
    paths = set()
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        relative = os.path.relpath(folder, PACKAGE)
        base = "unroll" if relative == "." else "unroll/" + relative.replace(os.sep, "/")
        paths.add(base)
        for file in files:
            if file.endswith(".py") and not (file == "__init__.py" and base != "unroll"):
                paths.add(f"{base}/{file}")
    return paths


def test_the_readme_tree_is_the_package():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        named = tree_paths(f.read())
    actual = package_paths()
    assert not actual - named, f"modules missing from the README's layout tree: {sorted(actual - named)}"
    assert not named - actual, f"the README's layout tree names what is not in unroll/: {sorted(named - actual)}"


def test_the_docs_include_the_readmes_tree():
    with open(os.path.join(ROOT, "docs", "concepts.md"), encoding="utf-8") as f:
        assert '--8<-- "README.md:layout"' in f.read()


def test_the_tree_parser_notices_a_missing_and_an_extra_module():
    text = (
        "<!-- --8<-- [start:layout] -->\n```\nunroll/\n  a.py   one\n  pkg/   two\n    _b.py  three\n"
        "           continued\n```\n<!-- --8<-- [end:layout] -->"
    )
    assert tree_paths(text) == {"unroll", "unroll/a.py", "unroll/pkg", "unroll/pkg/_b.py"}
