"""resnet-deploy: trained ResNet-family weights -> BN folding -> ONNX -> validated, timed inference engines.

Python API (the CLI is a thin layer over it):

    from resnet_deploy import BuildConfig, build
    report = build(BuildConfig(arch="resnet50", weights=Path("w.pth"), val_data=Path("val/"), out=Path("out/")))
    report.return_code  # 0 when every engine passed its checks
"""

from .config import BuildConfig
from .data import Preprocess, PreprocessOverrides, open_dataset
from .errors import CheckFailed, ResnetDeployError, UserError
from .models import ModelOptions, load_model
from .options import BenchmarkOptions, Precision, Target
from .pipeline.build import build

__all__ = [
    "BenchmarkOptions",
    "BuildConfig",
    "CheckFailed",
    "ModelOptions",
    "Precision",
    "Preprocess",
    "PreprocessOverrides",
    "ResnetDeployError",
    "Target",
    "UserError",
    "build",
    "load_model",
    "open_dataset",
]
