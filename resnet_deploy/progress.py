"""Progress bars and status lines on stderr (rich), or nothing at all.

Stages take a `Progress` and never check for terminals themselves; the CLI picks the implementation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Silent: iterates without drawing and drops status lines. The default for the Python API."""

    def track(self, iterable: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        yield from iterable

    def log(self, message: str) -> None:
        pass

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


class RichProgress(Progress):
    """Bars on stderr when it is a terminal; status lines on stderr always."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as _Progress

        self.console = Console(stderr=True, highlight=False)
        self._bars = _Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=not sys.stderr.isatty(),
        )

    def __enter__(self) -> "RichProgress":
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def track(self, iterable: Iterable[T], total: int | None, description: str) -> Iterator[T]:
        task = self._bars.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                self._bars.advance(task)
        finally:
            self._bars.remove_task(task)

    def log(self, message: str) -> None:
        self.console.print(message, markup=False)
