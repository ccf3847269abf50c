"""The Runner interface (after polygraphy's runners): a context manager with `infer(batch) -> logits`.

Checks live here, in the base class, so every backend gets them: the runner must be active, the batch
must be an (N, C, H, W) float32 array, and the logits must come back as (N, num_classes) float32.
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import UserError


class Runner(abc.ABC):
    """Subclasses implement `_activate`, `_deactivate` and `_infer`."""

    backend: str = "?"

    def __init__(self, name: str, precision: str, target: str | None = None) -> None:
        self.name = name
        self.precision = precision
        self.target = target
        self.is_active = False

    def __enter__(self) -> "Runner":
        if self.is_active:
            raise RuntimeError(f"runner {self.name} is already active")
        self._activate()
        self.is_active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._deactivate()
        finally:
            self.is_active = False

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active: use it inside a `with` block")
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32 or batch.ndim != 4:
            got = f"{batch.dtype} {batch.shape}" if isinstance(batch, np.ndarray) else type(batch).__name__
            raise UserError(f"runner {self.name}: expected an (N, C, H, W) float32 array, got {got}")
        logits = self._infer(np.ascontiguousarray(batch))
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise RuntimeError(f"runner {self.name} returned shape {logits.shape} for a batch of {batch.shape[0]}")
        return logits.astype(np.float32, copy=False)

    def prepare(self, batch_size: int) -> None:
        """Get ready for batches of `batch_size` (e.g. compile for that shape) so that the first timed call
        does not pay for it; the benchmark calls it before warming up. A no-op unless a backend needs it."""

    def synchronize(self) -> None:
        """Wait for queued device work (GPU runners); a no-op on the CPU."""

    def device_ms(self) -> float | None:
        """GPU compute time of the last `infer` in ms (CUDA events), for GPU runners that measure it; else None."""
        return None

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, object]:
        """Backend details for the report (execution providers, threads, ...)."""
        return {}
