"""Progress bars for long runs: ``tqdm.auto`` (a widget in Jupyter, text in terminals and logs)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between lines when the stream is not a terminal (CI logs, files)


def _interactive(stream) -> bool:
    """A terminal or a notebook (where ``tqdm.auto`` draws a widget)."""
    notebook = any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__)
    return notebook or (hasattr(stream, "isatty") and stream.isatty())


def progress(
    total: int,
    desc: str = "",
    enabled: bool = True,
    postfix: Callable[[], str] | None = None,
    min_interval: float = 0.25,
    stream=None,
    start: int = 0,
) -> Iterator[int]:
    """Yields ``start..total-1`` (``start > 0``: a resumed run) under a tqdm bar
    ``desc: 40%|####      | i/total [elapsed<eta, rate step/s, postfix]``.

    The bar is redrawn at most every ``min_interval`` seconds on a terminal or in a
    notebook, every ``LOG_INTERVAL`` seconds elsewhere. ``postfix()`` (e.g. the loss) is
    called at most that often (it may wait for the device), and once at the end.
    ``enabled=False`` draws nothing.
    """
    if not enabled:
        yield from range(start, total)
        return
    stream = stream or sys.stderr
    interval = min_interval if _interactive(stream) else LOG_INTERVAL
    bar = tqdm(
        total=total,
        initial=start,
        desc=desc.strip(),
        file=stream,
        mininterval=interval,
        unit="step",
        dynamic_ncols=True,
    )
    last = time.perf_counter()
    try:
        for i in range(start, total):
            try:
                yield i
            except GeneratorExit:  # the loop broke after step i
                bar.update(1)
                raise
            now = time.perf_counter()
            if postfix is not None and now - last >= interval:
                bar.set_postfix_str(postfix(), refresh=False)
                last = now
            bar.update(1)
    finally:  # the loop ended, or broke early (a stop or a time limit): the last figures, then the bar closes
        if postfix is not None:
            bar.set_postfix_str(postfix(), refresh=False)
        bar.close()
