"""Architecture name + weights file (or hub folder) -> an `nn.Module` in eval mode, loaded safely.

Weights are read with `torch.load(weights_only=True)` or safetensors: nothing in a user's file is ever
unpickled. Training checkpoints are unwrapped by checkpoints.py. Models come from timm (first) or torchvision;
preprocessing comes from timm's data config (or the hub folder's), each setting overridable by the user.
"""

from __future__ import annotations

import argparse
import difflib
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoints import HubFolder, Unwrapped, check_class_names, read_hub_folder, unwrap
from .data import (
    PREPROCESS_FIELDS,
    Dataset,
    ImageFolderDataset,
    Preprocess,
    PreprocessOverrides,
    check_crop_pct,
    parse_crop_mode,
    parse_interpolation,
    parse_mean,
    parse_std,
)
from .errors import UserError
from .files import read_user_text, sha256_file
from .options import Configurable, Setting

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

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")  # .tar: timm's train.py writes .pth.tar

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


def resolve_arch(name: str, option: str = "--arch") -> ArchSpec:
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
        raise UserError(f"{option} {raw!r}: unknown library {library!r}; use timm/NAME or torchvision/NAME")
    raise UserError(f"{option} {raw!r} is not a ResNet-family architecture known to timm or torchvision; {hint}")


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
    return resolve_preprocess(arch, model, input_size)[0]


def resolve_preprocess(
    arch: ArchSpec,
    model: nn.Module,
    input_size: tuple[int, int, int] | None = None,
    overrides: PreprocessOverrides = PreprocessOverrides(),
    hub: HubFolder | None = None,
) -> tuple[Preprocess, dict[str, str]]:
    """The preprocessing to validate with, and where each setting came from: the user's options first (`input_size`,
    `overrides`), then the hub folder's config.json, then timm's data config for the arch (torchvision's recipe)."""
    if hub is not None:
        from timm.data import resolve_data_config

        base, origin = resolve_data_config({}, pretrained_cfg=hub.pretrained_cfg), str(hub.config)
    elif arch.library == "timm":
        from timm.data import resolve_data_config

        base, origin = resolve_data_config({}, model=model), f"timm's default for {arch}"
    else:  # torchvision: resize 256, center crop 224, bilinear, ImageNet mean/std
        base, origin = Preprocess().to_dict(), "torchvision's ImageNet default"
    given = {**overrides.given(), **({"input_size": input_size} if input_size is not None else {})}
    values = {**{k: base.get(k) for k in PREPROCESS_FIELDS}, **given}
    try:
        preprocess = Preprocess(
            input_size=tuple(int(v) for v in values["input_size"]),
            interpolation=values["interpolation"] or "bilinear",
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            crop_pct=float(values["crop_pct"] or 0.875),
            crop_mode=values["crop_mode"] or "center",
        )
    except (UserError, TypeError, ValueError) as exc:
        raise UserError(f"{origin}: preprocessing {exc}; fix it or give --mean/--std/--crop-pct/... instead") from None
    sources = {k: f"--{k.replace('_', '-')}" if k in given else origin for k in PREPROCESS_FIELDS}
    return preprocess, sources


# ------------------------------------------------------------------------------------------- weights


def read_checkpoint(path: Path) -> object:
    """What a `.pth`/`.pt`/`.bin`/`.ckpt`/`.pth.tar` (weights_only) or `.safetensors` file holds, read safely."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"--weights {path} does not exist; give the path of a .pth, .pt, .ckpt or .safetensors file (or a hub folder)"
        )
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UserError(
            f"--weights {path}: unsupported file type {suffix!r}; give a .pth, .pt, .ckpt, .pth.tar or .safetensors file"
        )
    if path.stat().st_size == 0:
        raise UserError(f"--weights {path} is empty (0 bytes); save the state_dict again")
    return _read_safetensors(path) if suffix == ".safetensors" else _read_torch(path)


def read_state_dict(path: Path, arch: ArchSpec | None = None, ema: bool = False) -> dict[str, torch.Tensor]:
    """The model's state_dict in a weights file (checkpoints.py unwraps training checkpoints; with `arch`, the set of
    tensors whose names fit it exactly; `ema`: its EMA copy)."""
    return unwrap(read_checkpoint(path), None if arch is None else expected_keys(arch), ema=ema, path=Path(path)).state


@lru_cache(maxsize=16)
def expected_keys(arch: ArchSpec) -> frozenset[str]:
    """The state_dict names of `arch` (built on the meta device: no memory, no initialisation)."""
    with torch.device("meta"):
        return frozenset(create_model(arch, 1).state_dict())


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
        # timm's train.py and torchvision's reference scripts store their command line as an argparse.Namespace
        # (`args`): allowed, as timm's own loader does; it holds plain values, any other class is still refused.
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4" and the like: the error says it
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
class ModelOptions(Configurable):
    """How to read the user's model beyond --arch and --weights: which weights of a training checkpoint (the EMA
    copy with `ema`), the preprocessing it was trained with, and its class names (`labels`: one per line)."""

    SETTINGS = (
        Setting("ema", bool, "Use the EMA weights of a training checkpoint (state_dict_ema, model_ema)."),
        Setting(
            "mean", str, "Normalization mean the model was trained with: 1 or 3 values (default: the arch's).", parse=parse_mean
        ),
        Setting(
            "std", str, "Normalization std the model was trained with: 1 or 3 values (default: the arch's).", parse=parse_std
        ),
        Setting(
            "crop_pct", float, "Share of the resized image kept by the crop, 0.1..1 (default: the arch's).", parse=check_crop_pct
        ),
        Setting(
            "crop_mode", str, "center, squash (resize to the input size) or border (default: the arch's).", parse=parse_crop_mode
        ),
        Setting(
            "interpolation",
            str,
            "bilinear, bicubic, nearest, box, hamming or lanczos (default: the arch's).",
            parse=parse_interpolation,
        ),
        Setting("labels", Path, "Class names, one per line, in classifier order."),
    )

    ema: bool = False
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    labels: Path | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> ModelOptions:
        """From the --ema/--mean/--std/--crop-pct/--crop-mode/--interpolation/--labels values (the preprocessing's
        go to `preprocess`)."""
        given = {s.key: s.read(values.get(s.key)) for s in cls.SETTINGS}
        preprocess = PreprocessOverrides(**{k: given.pop(k) for k in list(given) if k not in ("ema", "labels")})
        return cls(**given, preprocess=preprocess)


@dataclass(frozen=True)
class ModelInfo:
    """What describes a model independently of its weights' form (state_dict, folded, ONNX)."""

    arch: str
    num_classes: int
    preprocess: Preprocess
    weights_sha256: str
    class_names: tuple[str, ...] | None = None
    # where it came from: `checkpoint` (the weights used in the file), `preprocess_source`, `class_names_source`
    origin: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.preprocess.input_size),
            "weights_sha256": self.weights_sha256,
            "preprocess": self.preprocess.to_dict(),
            "class_names": None if self.class_names is None else list(self.class_names),
            **self.origin,
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
    class_names: tuple[str, ...] | None = None
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(str(self.arch), self.num_classes, self.preprocess, self.weights_sha256, self.class_names, self.origin)

    def describe(self) -> list[str]:
        """What was loaded, for the log: the weights used in the file and the effective preprocessing (with sources)."""
        by_source: dict[str, list[str]] = {}
        for name, source in self.origin.get("preprocess_source", {}).items():
            by_source.setdefault(source, []).append(name)
        sources = "; ".join(f"{', '.join(names)}: {source}" for source, names in by_source.items())
        lines = [f"preprocessing: {self.preprocess.describe()} ({sources})"]
        checkpoint = self.origin.get("checkpoint") or {}
        if checkpoint.get("layout") not in (None, "state_dict") or checkpoint.get("prefix"):
            lines.insert(0, f"weights: {checkpoint['description']}")
        if self.class_names is not None:
            shown = ", ".join(self.class_names[:5]) + (", ..." if len(self.class_names) > 5 else "")
            lines.append(f"class names ({self.origin.get('class_names_source')}): {shown}")
        return lines

    def name_classes_after(self, dataset: Dataset, option: str) -> "LoadedModel":
        """The model, with the class folders of `dataset` as its class names when it has none yet and they are one
        per classifier output (ImageFolder labels them in sorted order)."""
        folders = dataset.classes if isinstance(dataset, ImageFolderDataset) else None
        if self.class_names is not None or not folders or len(folders) != self.num_classes:
            return self
        return replace(self, class_names=tuple(folders), origin={**self.origin, "class_names_source": f"{option} class folders"})


def read_labels(path: Path, num_classes: int) -> tuple[str, ...]:
    """--labels FILE: one class name per line, in classifier order (trailing blank lines ignored)."""
    label = f"--labels {path}"
    fix = "give a text file with one class name per line, in the classifier's order"
    lines = read_user_text(path, label, fix).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return check_class_names(tuple(line.strip() for line in lines), num_classes, label, fix)


def _arch_of(arch_name: str | None, weights: Path, hub: HubFolder | None) -> ArchSpec:
    """--arch, or the hub folder's architecture (both must agree when both are given)."""
    if hub is None:
        if not arch_name:
            raise UserError(
                f"--arch is missing: --weights {weights} is a file; give --arch (only a hub folder's config.json names it)"
            )
        return resolve_arch(arch_name)
    from timm.models import split_model_name_tag

    name = split_model_name_tag(hub.architecture)[0]
    arch = resolve_arch(name, option=f"{hub.config}: architecture")
    if arch.library != "timm":
        raise UserError(f"{hub.config}: architecture {hub.architecture!r} is not a timm model; hub folders are timm's layout")
    if arch_name and resolve_arch(arch_name).name != arch.name:
        raise UserError(
            f"--arch {arch_name} disagrees with {hub.config} (architecture {hub.architecture!r}); "
            "drop --arch (the folder names its architecture) or give the folder of that model"
        )
    return arch


def _check_declared_arch(found: Unwrapped, arch: ArchSpec, weights: Path) -> None:
    """The model name a training script recorded in its checkpoint (timm's `arch`, torchvision's `args.model`)."""
    if not found.declared_arch:
        return
    name = found.declared_arch.split(":")[-1].rpartition("/")[2].split(".")[0]  # hf-hub:timm/resnet50.a1_in1k
    try:
        declared = resolve_arch(name)
    except UserError:
        return  # not a model name (timm records the class name, 'resnet', when train.py had no args)
    if declared.name != arch.name:
        raise UserError(
            f"--weights {weights} was saved by a training script for {found.declared_arch!r}, not --arch {arch}; "
            f"pass --arch {declared.name}"
        )


def _check_hub_model_args(hub: HubFolder, model: nn.Module) -> None:
    """config.json's model_args must be those the arch is built with here (only the class count may differ)."""
    from timm.models._input import get_model_args

    defaults = get_model_args(model)
    different = {k: v for k, v in hub.model_args.items() if k != "num_classes" and (k not in defaults or defaults[k] != v)}
    if different:
        raise UserError(
            f"{hub.config}: model_args {different} differ from what resnet-deploy builds "
            f"({ {k: defaults.get(k) for k in different} }); only models built with timm's defaults are supported"
        )


def load_model(
    arch_name: str | None,
    weights: Path,
    num_classes: int | None = None,
    input_size: tuple[int, int, int] | None = None,
    options: ModelOptions = ModelOptions(),
) -> LoadedModel:
    """The user's model: `weights` is a weights file (a state_dict or a training checkpoint) or a hub folder."""
    weights = Path(weights)
    hub = read_hub_folder(weights) if weights.is_dir() else None
    arch = _arch_of(arch_name, weights, hub)
    path = hub.weights if hub is not None else weights
    found = unwrap(read_checkpoint(path), expected_keys(arch), ema=options.ema, path=path, arch=str(arch))
    _check_declared_arch(found, arch, path)
    state_dict = found.state
    bad = find_nonfinite(state_dict)
    if bad is not None:
        raise UserError(
            f"--weights {path}: tensor {bad[0]!r} holds {bad[1]} NaN/Inf values; "
            "the checkpoint is broken, save it again from a healthy model"
        )
    if num_classes is None:
        num_classes = hub.num_classes if hub is not None and hub.num_classes else infer_num_classes(state_dict, arch)
    elif num_classes < 1:
        raise UserError(f"--num-classes must be >= 1, got {num_classes}")
    model = create_model(arch, num_classes)
    if hub is not None:
        _check_hub_model_args(hub, model)
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
        where = f" ({found.where()})" if found.where() else ""
        raise UserError(f"--weights {path}{where} do not fit --arch {arch}: {'; '.join(parts)}; {fix}")
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    preprocess, preprocess_source = resolve_preprocess(arch, model, input_size, options.preprocess, hub)
    class_names, class_source = None, None
    if options.labels is not None:
        class_names, class_source = read_labels(options.labels, num_classes), f"--labels {options.labels}"
    elif hub is not None and hub.label_names is not None:
        fix = "fix its label_names or give --labels FILE"
        class_names = check_class_names(hub.label_names, num_classes, f"{hub.config} label_names", fix)
        class_source = f"{hub.config} label_names"
    checkpoint = found.as_dict()
    if hub is not None:
        description = f"hub folder {hub.folder}: {path.name}, architecture {hub.architecture!r} from {hub.config.name}"
        checkpoint.update(layout="hub", hub_config=str(hub.config), description=description)
    return LoadedModel(
        module=model,
        arch=arch,
        num_classes=num_classes,
        preprocess=preprocess,
        weights_path=path,
        weights_sha256=sha256_file(path),
        class_names=class_names,
        origin={"checkpoint": checkpoint, "preprocess_source": preprocess_source, "class_names_source": class_source},
    )
