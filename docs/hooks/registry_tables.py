"""mkdocs hook: the docs' estimator table and the API reference's constructor entries,
generated from `unroll.registry` at build time, so that the registry is the one list.

A page holds a marker line where the generated Markdown goes:

* `<!-- registry: estimator table -->` (docs/estimators/index.md): one row per
  registered estimator: its `unroll compare` name, constructor (linked to its family's
  page), what it computes, its bias and the tests that prove it;
* `<!-- registry: estimator reference -->` (docs/reference/estimators.md): one
  mkdocstrings entry per constructor, under a heading per family.

`tests/test_registry.py` registers a toy estimator from a temporary module and checks
that it appears in both, as in `unroll list` and `unroll compare`.
"""

from __future__ import annotations

import unroll
from unroll import registry

TABLE_MARKER = "<!-- registry: estimator table -->"
REFERENCE_MARKER = "<!-- registry: estimator reference -->"

# the page, under docs/estimators/, that explains each family; a constructor's section
# there is its name with `-` for `_` (an estimator with a page of its own is named here)
FAMILY_PAGES = {"bptt": "bptt.md", "forward": "rtrl.md", "synthetic": "dni.md", "es": "es.md"}
OWN_PAGES = {"forward_gradient": "forward-gradient.md", "dni": "dni.md"}


def reference_path(constructor) -> str:
    """Where mkdocstrings finds a constructor: `unroll.NAME` if `unroll` re-exports it,
    else its own module's path (an estimator registered from outside the package)."""
    name = constructor.__name__
    if getattr(unroll, name, None) is constructor:
        return f"unroll.{name}"
    return f"{constructor.__module__}.{constructor.__qualname__}"


def _link(entry: registry.Entry) -> str:
    name = entry.constructor.__name__
    if getattr(unroll, name, None) is not entry.constructor:  # not one of the built-ins' pages
        return f"`{reference_path(entry.constructor)}`"
    page = OWN_PAGES.get(name) or f"{FAMILY_PAGES[entry.family]}#{name.replace('_', '-')}"
    return f"[`{name}`]({page})"


def estimator_table() -> str:
    """The Markdown table of every registered estimator, in registry order."""
    rows = [
        "| `unroll compare` name | constructor | computes | unbiased for the episode objective? | proof in |",
        "|---|---|---|---|---|",
    ]
    for entry in registry.ESTIMATORS.values():
        name = entry.name + ("[-K]" if entry.windowed else "")
        cells = [f"`{name}`", _link(entry), entry.description, entry.bias or "not stated", entry.proof or "not stated"]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def estimator_reference() -> str:
    """mkdocstrings entries, one per registered constructor, under a heading per family."""
    parts = []
    for family, about in registry.FAMILIES.items():
        paths = []
        for entry in registry.ESTIMATORS.values():
            path = reference_path(entry.constructor)
            if entry.family == family and path not in paths:
                paths.append(path)
        if paths:
            parts.append(f"## {about[0].upper()}{about[1:]}\n")
            parts.extend(f"::: {path}\n" for path in paths)
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """The mkdocs event: fills the markers of the page being built."""
    if TABLE_MARKER in markdown:
        markdown = markdown.replace(TABLE_MARKER, estimator_table())
    if REFERENCE_MARKER in markdown:
        markdown = markdown.replace(REFERENCE_MARKER, estimator_reference())
    return markdown
