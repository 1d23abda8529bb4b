"""The one way a benchmark reports: print its tables, and with ``--out`` write them (under
their header, which was printed when the run started) to a markdown file."""

from __future__ import annotations


def report(text: str, out: str | None, header: str = "") -> None:
    """Prints ``text``; with ``out``, writes ``header`` (if any), a blank line and ``text`` there."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write((header + "\n\n" if header else "") + text + "\n")
