"""Architecture name + weights file -> an `nn.Module` in eval mode, loaded safely.

Weights are read with `torch.load(weights_only=True)` or safetensors: nothing in a user's file is ever
unpickled. Models come from timm (first) or torchvision; preprocessing comes from timm's data config.
"""

from __future__ import annotations

import difflib
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from .artifacts import sha256_file
from .data import Preprocess
from .errors import UserError

# Name prefixes of the ResNet family (and kin) that resnet-deploy accepts.
FAMILY_PREFIXES = (
    "resnet",  # resnet18..152, resnet50d, resnet26t, resnetrs*, resnetv2*, resnetblur*, resnetaa*
    "resnext",
    "wide_resnet",
    "seresnet",
    "seresnext",
    "res2net",
    "res2next",
    "ecaresnet",
    "ecaresnext",
    "skresnet",
    "skresnext",
    "gcresnet",
    "gcresnext",
    "resnest",
    "legacy_seresnet",
    "legacy_seresnext",
    "gluon_resnet",
    "gluon_resnext",
    "gluon_seresnext",
    "tv_resnet",
    "tv_resnext",
)

# Checkpoint keys under which training scripts commonly nest the state_dict, in order of preference.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema")
# Prefixes added by DataParallel/DDP (module.) and torch.compile (_orig_mod.).
STRIP_PREFIXES = ("module.", "_orig_mod.")

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")

# Architectures compared against a checkpoint whose keys do not fit, to suggest the likely one.
SUGGESTION_CANDIDATES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet50d",
    "resnet101d",
    "resnet26t",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "seresnet50",
    "seresnext50_32x4d",
    "res2net50_26w_4s",
    "ecaresnet50t",
    "skresnet18",
    "skresnet34",
    "resnetv2_50",
    "resnetrs50",
)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    library: str  # "timm" or "torchvision"

    def __str__(self) -> str:
        return self.name if self.library == "timm" else f"torchvision/{self.name}"


def _is_family(name: str) -> bool:
    return name.startswith(FAMILY_PREFIXES)


@lru_cache(maxsize=1)
def _known_names() -> tuple[frozenset[str], frozenset[str]]:
    import timm
    import torchvision

    timm_names = frozenset(n for n in timm.list_models() if _is_family(n))
    tv_names = frozenset(n for n in torchvision.models.list_models(module=torchvision.models) if _is_family(n))
    return timm_names, tv_names


def resolve_arch(name: str) -> ArchSpec:
    """`resnet50` (timm first, then torchvision), or explicitly `timm/NAME` / `torchvision/NAME`."""
    timm_names, tv_names = _known_names()
    raw = name.strip()
    library, _, bare = raw.rpartition("/")
    bare = bare.lower()
    if library in ("", "timm") and bare in timm_names:
        return ArchSpec(bare, "timm")
    if library in ("", "torchvision", "tv") and bare in tv_names:
        return ArchSpec(bare, "torchvision")
    pool = sorted(timm_names | tv_names)
    close = difflib.get_close_matches(bare, pool, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "e.g. resnet18, resnet50, resnext50_32x4d, seresnet50"
    if library not in ("", "timm", "torchvision", "tv"):
        raise UserError(f"--arch {raw!r}: unknown library {library!r}; use timm/NAME or torchvision/NAME")
    raise UserError(f"--arch {raw!r} is not a ResNet-family architecture known to timm or torchvision; {hint}")


def create_model(arch: ArchSpec, num_classes: int) -> nn.Module:
    """A randomly initialised model of `arch` with `num_classes` outputs, in eval mode."""
    if arch.library == "timm":
        import timm

        model = timm.create_model(arch.name, pretrained=False, num_classes=num_classes)
    else:
        import torchvision

        model = torchvision.models.get_model(arch.name, weights=None, num_classes=num_classes)
    return model.eval()


def default_preprocess(arch: ArchSpec, model: nn.Module, input_size: tuple[int, int, int] | None = None) -> Preprocess:
    """The arch's eval preprocessing (timm's data config; torchvision's ImageNet recipe), size overridable."""
    if arch.library == "timm":
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        base = Preprocess(
            input_size=tuple(cfg["input_size"]),
            interpolation=cfg["interpolation"] or "bilinear",
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            crop_pct=float(cfg.get("crop_pct") or 0.875),
            crop_mode=cfg.get("crop_mode") or "center",
        )
    else:
        base = Preprocess()  # torchvision: resize 256, center crop 224, bilinear, ImageNet mean/std
    if input_size is not None:
        base = Preprocess(input_size, base.interpolation, base.mean, base.std, base.crop_pct, base.crop_mode)
    return base


# ------------------------------------------------------------------------------------------- weights


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from `.pth`/`.pt`/`.bin`/`.ckpt` (weights_only) or `.safetensors`.

    Unwraps `state_dict`/`model`/`model_state_dict` and strips `module.` / `_orig_mod.` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path} does not exist; give the path of a .pth, .pt or .safetensors state_dict")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"--weights {path}: unsupported file type {suffix!r}; give a .pth, .pt or .safetensors file")
    if path.stat().st_size == 0:
        raise UserError(f"--weights {path} is empty (0 bytes); save the state_dict again")
    if suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raw = _read_torch(path)
    return _normalise(raw, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for any bad file
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"--weights {path} is not a valid safetensors file ({detail}); "
            "write it with safetensors.torch.save_file(model.state_dict(), path)"
        ) from None


# The libraries whose pickled classes mean "a whole model was saved" rather than "code was planted".
MODEL_LIBRARIES = ("torch", "timm", "torchvision", "__main__")


def _check_zip(path: Path) -> None:
    """torch.load trusts a checkpoint's zip records: check their CRCs (a flipped bit in the weights loads
    silently otherwise) and their declared sizes (what it allocates) first."""
    if not zipfile.is_zipfile(path):
        return  # the legacy format, or not a checkpoint at all: torch.load says which
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
            if declared > 4 * path.stat().st_size + (1 << 20):  # torch.save stores records uncompressed
                raise UserError(
                    f"--weights {path} would expand to {declared} bytes from {path.stat().st_size} (a zip bomb?); "
                    "save the weights with torch.save(model.state_dict(), path)"
                )
            bad = zf.testzip()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises BadZipFile, zlib.error, EOFError, ... for damage
        bad = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    if bad is not None:
        raise UserError(f"--weights {path} is corrupted ({bad} fails its check); copy or save it again")


def _read_torch(path: Path) -> object:
    _check_zip(path)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4" and the like: the error below says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if found is None:  # not a pickle of objects: garbage, a damaged file, or a pickle torch.save did not write
            raise UserError(
                f"--weights {path} is not a readable PyTorch checkpoint ({_unpickling_detail(exc)}); it may be truncated, "
                "corrupted or not written by torch.save: save it again with torch.save(model.state_dict(), path)"
            ) from None
        name = found.group(1)
        what = "a whole model?" if name.split(".")[0] in MODEL_LIBRARIES else "code that would run on loading"
        raise UserError(
            f"--weights {path} holds pickled Python objects ({name}: {what}), which resnet-deploy never unpickles; "
            "save the weights instead: torch.save(model.state_dict(), 'weights.pth')"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0].split(". ")[0][:160] if str(exc) else type(exc).__name__
        raise UserError(
            f"--weights {path} is not a readable PyTorch checkpoint ({detail}); it may be truncated or corrupted, save it again"
        ) from None


def _unpickling_detail(exc: Exception) -> str:
    """The line of torch's weights-only error that names the problem (its other lines are boilerplate)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    useful = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines if not line.startswith(boilerplate)]
    useful = [line for line in useful if line]
    return useful[0][:160] if useful else "not a weights-only pickle"


def _normalise(raw: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, dict):
        raise UserError(f"--weights {path} holds a {type(raw).__name__}, not a state_dict; save model.state_dict()")
    state = raw
    for key in WRAPPER_KEYS:
        inner = raw.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue  # training metadata beside the weights (epoch, step, ...)
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in STRIP_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        tensors[name] = value
    if not tensors:
        raise UserError(f"--weights {path} holds no tensors; give a state_dict saved with torch.save(model.state_dict(), ...)")
    return tensors


def find_nonfinite(state_dict: dict[str, torch.Tensor]) -> tuple[str, int] | None:
    """The first floating-point tensor holding NaN or Inf, with how many such values."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad
    return None


def classifier_key(arch: ArchSpec) -> str:
    """The state_dict key of the classifier weight (`fc.weight` for most ResNets)."""
    if arch.library == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(arch.name) if hasattr(timm.models, "get_pretrained_cfg") else None
        name = getattr(cfg, "classifier", None) if cfg is not None else None
        return f"{name or 'fc'}.weight"
    return "fc.weight"


def infer_num_classes(state_dict: dict[str, torch.Tensor], arch: ArchSpec) -> int:
    key = classifier_key(arch)
    weight = state_dict.get(key)
    if weight is None or weight.ndim < 2:
        raise UserError(f"cannot infer the number of classes: the weights have no 2-D {key!r}; pass --num-classes N")
    return int(weight.shape[0])


def _shape_mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, misshaped


def suggest_arch(state_dict: dict[str, torch.Tensor], num_classes: int, exclude: str) -> str | None:
    """The candidate architecture whose keys and shapes best fit the state_dict, if one fits well."""
    best, best_score = None, 0.0
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in SUGGESTION_CANDIDATES:
        if name == exclude:
            continue
        try:
            with torch.device("meta"):
                model = create_model(ArchSpec(name, "timm"), num_classes)
        except Exception:  # noqa: BLE001 - a candidate that cannot be built is simply not suggested
            continue
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        matched = sum(1 for k, s in expected.items() if shapes.get(k) == s)
        score = matched / max(len(expected), len(shapes))
        if score > best_score:
            best, best_score = name, score
    return best if best_score >= 0.9 else None


@dataclass(frozen=True)
class ModelInfo:
    """What describes a model independently of its weights' form (state_dict, folded, ONNX)."""

    arch: str
    num_classes: int
    preprocess: Preprocess
    weights_sha256: str

    def as_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.preprocess.input_size),
            "weights_sha256": self.weights_sha256,
            "preprocess": self.preprocess.to_dict(),
        }


@dataclass
class LoadedModel:
    """The PyTorch reference: the user's trained model, with what describes it."""

    module: nn.Module
    arch: ArchSpec
    num_classes: int
    preprocess: Preprocess
    weights_path: Path
    weights_sha256: str

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(str(self.arch), self.num_classes, self.preprocess, self.weights_sha256)


def load_model(
    arch_name: str,
    weights: Path,
    num_classes: int | None = None,
    input_size: tuple[int, int, int] | None = None,
) -> LoadedModel:
    arch = resolve_arch(arch_name)
    state_dict = read_state_dict(weights)
    bad = find_nonfinite(state_dict)
    if bad is not None:
        raise UserError(
            f"--weights {weights}: tensor {bad[0]!r} holds {bad[1]} NaN/Inf values; "
            "the checkpoint is broken, save it again from a healthy model"
        )
    if num_classes is None:
        num_classes = infer_num_classes(state_dict, arch)
    elif num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {num_classes}")
    model = create_model(arch, num_classes)
    missing, unexpected, misshaped = _shape_mismatches(model, state_dict)
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
        if misshaped:
            parts.append(f"{len(misshaped)} mis-shaped ({', '.join(misshaped[:2])})")
        guess = suggest_arch(state_dict, num_classes, exclude=arch.name)
        fix = f"did you mean --arch {guess}?" if guess else "check --arch and --num-classes"
        raise UserError(f"--weights {weights} do not fit --arch {arch}: {'; '.join(parts)}; {fix}")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return LoadedModel(
        module=model,
        arch=arch,
        num_classes=num_classes,
        preprocess=default_preprocess(arch, model, input_size),
        weights_path=Path(weights),
        weights_sha256=sha256_file(Path(weights)),
    )
