"""The PyTorch reference runner: the model in FP32 under `torch.inference_mode()`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import Runner
from .kind import EngineKind, EngineSettings, EngineSpec, Model

if TYPE_CHECKING:
    from torch import nn


class PyTorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, module: nn.Module, name: str = "pytorch-fp32", threads: int | None = None) -> None:
        super().__init__(name, precision="fp32")
        self.module = module
        self.threads = threads
        self._saved_threads: int | None = None

    def _activate(self) -> None:
        import torch

        self.module.eval()
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def _deactivate(self) -> None:
        import torch

        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).float().numpy()

    def describe(self) -> dict[str, object]:
        import torch

        return {"torch": torch.__version__, "threads": self.threads or torch.get_num_threads()}


@dataclass(frozen=True)
class PyTorchOptions:
    """The reference runs no file: its spec carries the (folded or original) module itself."""

    module: nn.Module | None = None


class PyTorchKind(EngineKind):
    """The PyTorch reference every engine is compared with. It runs no ONNX file, so it plans no engine for one:
    the build and validate make its spec from the loaded module (`spec.options.module`)."""

    name = "pytorch"
    title = "PyTorch"
    options_type = PyTorchOptions

    def _plan(self, model: Model, settings: EngineSettings) -> list[EngineSpec]:
        return []

    def _runner(self, spec: EngineSpec) -> PyTorchRunner:
        if spec.options.module is None:
            raise RuntimeError(f"engine {spec.name}: the PyTorch reference needs its module (PyTorchOptions.module)")
        return PyTorchRunner(spec.options.module, spec.name, spec.threads)
