"""Runners: one interface (`base.Runner`) for the PyTorch reference, ONNX Runtime, OpenVINO and TensorRT.

`accuracy.py` compares a runner with a reference runner (the validate stage and the mixed-precision search use it).
"""

from .base import Runner

__all__ = ["Runner"]
