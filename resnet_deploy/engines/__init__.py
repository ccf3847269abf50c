"""Runners: one interface for the PyTorch reference, ONNX Runtime and TensorRT."""

from .base import Runner

__all__ = ["Runner"]
