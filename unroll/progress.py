"""A dependency-free progress bar for long runs (terminals and CI logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 60:02d}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"
    )


def progress(
    total: int,
    desc: str = "",
    enabled: bool = True,
    postfix: Callable[[], str] | None = None,
    min_interval: float = 0.25,
    stream=None,
    start: int = 0,
) -> Iterator[int]:
    """Yields ``start..total-1`` (``start > 0``: a resumed run) and draws ``desc |####   | i/total [elapsed<eta, rate] postfix``.

    On a terminal the bar is redrawn in place at most every ``min_interval`` seconds;
    elsewhere (CI logs, files) a line is written at every tenth of the run.
    ``postfix()`` is only called when a line is drawn (it may synchronize the device).
    """
    stream = stream or sys.stderr
    interactive = hasattr(stream, "isatty") and stream.isatty()
    first = start
    start = last = time.perf_counter()
    next_tenth = first * 10 // max(total, 1) + 1

    def draw(done: int, end: str) -> None:
        elapsed = time.perf_counter() - start
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        filled = int(20 * done / max(total, 1))
        extra = f" {postfix()}" if postfix is not None else ""
        line = f"{desc} |{'#' * filled}{' ' * (20 - filled)}| {done}/{total} [{_clock(elapsed)}<{_clock(eta)}, {rate:.1f} it/s]{extra}"
        stream.write(("\r" if interactive else "") + line + end)
        stream.flush()

    for i in range(first, total):
        yield i
        if not enabled:
            continue
        now = time.perf_counter()
        if interactive and now - last >= min_interval:
            draw(i + 1, "")
            last = now
        elif not interactive and (i + 1) * 10 >= next_tenth * total:
            draw(i + 1, "\n")
            next_tenth = (i + 1) * 10 // max(total, 1) + 1
    if enabled and interactive and first < total:
        draw(total, "\n")
