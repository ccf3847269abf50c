"""Progress bars and status lines on stderr (rich), or nothing at all.

Stages take a `Progress` and never check for terminals themselves; the CLI picks the implementation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Silent: iterates without drawing and drops status lines. The default for the Python API."""

    def track(
        self,
        iterable: Iterable[T],
        total: int | None,
        description: str,
        unit: str | None = None,
        size: Callable[[T], int] | None = None,
    ) -> Iterator[T]:
        """Each item of `iterable`, advancing a bar of `total` by `size(item)` (1 without `size`); with a
        `unit` (e.g. "images") the bar also shows the rate, in units per second."""
        yield from iterable

    def log(self, message: str) -> None:
        pass

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class RichProgress(Progress):
    """Bars on stderr when it is a terminal; status lines on stderr always (or both on `console`)."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as _Progress

        self.console = console or Console(stderr=True, highlight=False)
        self._bars = _Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            console=self.console,
            transient=True,
            disable=not (self.console.is_terminal if console else sys.stderr.isatty()),
        )

    def __enter__(self) -> "RichProgress":
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def track(
        self,
        iterable: Iterable[T],
        total: int | None,
        description: str,
        unit: str | None = None,
        size: Callable[[T], int] | None = None,
    ) -> Iterator[T]:
        task = self._bars.add_task(description, total=total, rate="")
        try:
            for item in iterable:
                yield item
                self._bars.advance(task, size(item) if size else 1)
                speed = next(t.speed for t in self._bars.tasks if t.id == task) if unit else None
                if speed:
                    self._bars.update(task, rate=f"{speed:.1f} {unit}/s")
        finally:
            self._bars.remove_task(task)

    def log(self, message: str) -> None:
        self.console.print(message, markup=False)
