"""The PyTorch reference runner: the model in FP32 under `torch.inference_mode()`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Runner


class PyTorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, module: nn.Module, name: str = "pytorch-fp32", threads: int | None = None) -> None:
        super().__init__(name, precision="fp32")
        self.module = module
        self.threads = threads
        self._saved_threads: int | None = None

    def _activate(self) -> None:
        self.module.eval()
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _deactivate(self) -> None:
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).float().numpy()

    def describe(self) -> dict[str, object]:
        return {"torch": torch.__version__, "threads": self.threads or torch.get_num_threads()}
