"""Weights as training code saves them -> the state_dict of the model inside, and where in the file it was.

A weights file holds the state_dict itself (plain, or with DataParallel's `module.` / torch.compile's `_orig_mod.`
prefix) or a training checkpoint with the state_dict nested under a key, its names prefixed by the attribute that
held the model in the training module:

- PyTorch Lightning (`Trainer.save_checkpoint`, `.ckpt`): `state_dict`, every name prefixed by the LightningModule's
  attribute (`model.`, `net.`, `backbone.`, ...; an EMA copy kept as another attribute has its own prefix), beside
  `optimizer_states`, `lr_schedulers`, `loops`, `callbacks`, `hyper_parameters`, `pytorch-lightning_version`;
- timm's train.py (`CheckpointSaver`, `.pth.tar`): `state_dict` and, trained with --model-ema, `state_dict_ema`,
  beside `arch` (the model name), `args`, `optimizer`, `epoch`, `metric`;
- torchvision's reference scripts (`checkpoint.pth`): `model` and, with --model-ema, `model_ema` (an AveragedModel:
  `module.` prefix plus `n_averaged`), beside `optimizer`, `lr_scheduler`, `epoch`, `args`.

Each set of tensors in the file is matched against the names the architecture expects, after each prefix its names
have; a set that matches exactly is the model. The EMA copy is taken only when asked for (or when it is the only one).

A hub folder (`config.json` + `model.safetensors` or `pytorch_model.bin`, timm's `save_for_hf` layout) is parsed by
timm's own `load_model_config_from_path`; its weights file is read like any other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

# Keys under which training code nests the state_dict, in order of preference (other keys holding tensors follow).
ENTRY_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "state_dict_ema",
    "model_ema",
    "ema_state_dict",
    "ema",
)
_EMA = re.compile(r"(^|_)ema($|_)")  # `ema`, `model_ema`, `ema_model`, `state_dict_ema`: a name part that says EMA

LAYOUTS = {
    "state_dict": "state_dict",
    "checkpoint": "checkpoint",
    "lightning": "PyTorch Lightning checkpoint",
    "timm-train": "timm train.py checkpoint",
    "torchvision-reference": "torchvision reference-script checkpoint",
    "hub": "hub folder",
}


@dataclass(frozen=True)
class Found:
    """One set of weights in a checkpoint: the key it is under (None: the top level) and the prefix of its names."""

    entry: str | None
    prefix: str

    @property
    def ema(self) -> bool:
        parts = [self.entry or "", *self.prefix.split(".")]
        return any(_EMA.search(part.lower()) for part in parts if part)

    def describe(self) -> str:
        where = "the top level" if self.entry is None else repr(self.entry)
        return where + (f" with prefix {self.prefix!r}" if self.prefix else "") + (" (EMA)" if self.ema else "")


@dataclass(frozen=True)
class Unwrapped:
    """The state_dict found in a checkpoint, and what else the file held."""

    state: dict[str, torch.Tensor]
    layout: str  # a key of LAYOUTS
    chosen: Found
    exact: bool  # its names are exactly the architecture's (False: the closest set, for the mismatch message)
    others: tuple[Found, ...] = ()  # the other complete sets of weights (e.g. the EMA copy)
    ignored: int = 0  # tensors beside the chosen ones that are not part of the model (n_averaged, a loss's buffers)
    declared_arch: str | None = None  # the model name the training script recorded (timm's `arch`, torchvision's args)

    @property
    def plain(self) -> bool:
        return self.chosen.entry is None and not self.chosen.prefix

    def where(self) -> str:
        """'state_dict with prefix 'model.'' for messages; '' for a plain state_dict."""
        return "" if self.plain else self.chosen.describe()

    def describe(self) -> str:
        text = f"{LAYOUTS[self.layout]}, weights from {self.chosen.describe()}"
        if self.others:
            text += f"; also in the file: {', '.join(f.describe() for f in self.others)}"
            if any(f.ema for f in self.others) and not self.chosen.ema:
                text += "; --ema uses the EMA weights"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "entry": self.chosen.entry,
            "prefix": self.chosen.prefix,
            "ema": self.chosen.ema,
            "also_found": [f.describe() for f in self.others],
            "ignored_tensors": self.ignored,
            "declared_arch": self.declared_arch,
            "description": self.describe(),
        }


def layout_of(raw: dict[Any, Any]) -> str:
    """Which training code wrote a checkpoint, from the keys it keeps beside the weights."""
    keys = {k for k in raw if isinstance(k, str)}
    if "pytorch-lightning_version" in keys or ("state_dict" in keys and keys & {"optimizer_states", "loops"}):
        return "lightning"
    if "state_dict" in keys and keys & {"arch", "state_dict_ema"}:
        return "timm-train"
    if "model" in keys and keys & {"lr_scheduler", "model_ema", "args"}:
        return "torchvision-reference"
    return "state_dict" if any(isinstance(v, torch.Tensor) for v in raw.values()) else "checkpoint"


def _declared_arch(raw: dict[Any, Any], layout: str) -> str | None:
    if layout == "timm-train" and isinstance(raw.get("arch"), str):
        return raw["arch"]
    if layout in ("timm-train", "torchvision-reference"):
        model = getattr(raw.get("args"), "model", None)  # argparse.Namespace of the training run
        return model if isinstance(model, str) else None
    return None


def _tensors(mapping: dict[Any, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def _sources(raw: dict[Any, Any]) -> list[tuple[str | None, dict[str, torch.Tensor]]]:
    """Every dict of tensors in the checkpoint: the top level, then the nested ones (known keys first)."""
    out: list[tuple[str | None, dict[str, torch.Tensor]]] = []
    top = _tensors(raw)
    if top:
        out.append((None, top))
    keys = [k for k in ENTRY_KEYS if k in raw] + [k for k in raw if isinstance(k, str) and k not in ENTRY_KEYS]
    for key in keys:
        if isinstance(raw[key], dict):
            tensors = _tensors(raw[key])
            if tensors:
                out.append((key, tensors))
    return out


def _prefix_counts(names: list[str], expected: frozenset[str]) -> dict[str, int]:
    """For each prefix p with some name p + e (e an expected name, p ending at a dot): how many such names."""
    counts: dict[str, int] = {}
    for name in names:
        start = 0
        while True:
            if name[start:] in expected:
                counts[name[:start]] = counts.get(name[:start], 0) + 1
            dot = name.find(".", start)
            if dot < 0:
                break
            start = dot + 1
    return counts


def shared_prefix(names: list[str]) -> str:
    """The leading dotted parts every name shares ('model.' for a LightningModule's `self.model`)."""
    prefix = ""
    while True:
        heads = {n[len(prefix) :].partition(".")[:2] for n in names}  # (first part, "." or "" when it is the last)
        if len(heads) != 1:
            return prefix
        head, dot = heads.pop()
        if not dot:
            return prefix
        prefix += head + "."


def _leading_parts(names: list[str], limit: int = 6) -> list[str]:
    parts = sorted({n.partition(".")[0] + "." for n in names if "." in n})
    nested = sorted({".".join(n.split(".")[:2]) + "." for n in names if n.count(".") >= 2})
    return ["''", *(repr(p) for p in (parts + nested)[:limit])]


def unwrap(raw: object, expected: frozenset[str] | None, *, ema: bool, path: Path, arch: str = "") -> Unwrapped:
    """The model's state_dict in a checkpoint. `expected`: the names the architecture has (None: not known, then
    the first set of tensors with the prefix all its names share). `ema`: take the EMA copy (--ema)."""
    if not isinstance(raw, dict):
        raise UserError(f"--weights {path} holds a {type(raw).__name__}, not a state_dict; save model.state_dict()")
    layout = layout_of(raw)
    sources = _sources(raw)
    declared = _declared_arch(raw, layout)
    top_keys = ", ".join(repr(k) for k in list(raw)[:12]) + (", ..." if len(raw) > 12 else "")
    if not sources:
        raise UserError(
            f"--weights {path} holds no tensors (top-level keys: {top_keys}); "
            "give a state_dict saved with torch.save(model.state_dict(), ...)"
        )
    if expected is None:
        pool = [(e, t) for e, t in sources if Found(e, shared_prefix(list(t))).ema == ema] or sources
        entry, tensors = pool[0]
        prefix = shared_prefix(list(tensors))
        return Unwrapped(_strip(tensors, prefix), layout, Found(entry, prefix), exact=False, declared_arch=declared)

    exact: list[tuple[Found, dict[str, torch.Tensor]]] = []
    partial: list[tuple[int, Found, dict[str, torch.Tensor]]] = []
    for entry, tensors in sources:
        names = list(tensors)
        for prefix, count in sorted(_prefix_counts(names, expected).items(), key=lambda item: len(item[0])):
            if count == len(expected) and sum(1 for n in names if n.startswith(prefix)) == len(expected):
                exact.append((Found(entry, prefix), tensors))  # every expected name under it, and nothing else
            partial.append((count, Found(entry, prefix), tensors))

    if exact:
        pool = [item for item in exact if item[0].ema == ema]
        if ema and not pool:
            found = ", ".join(f.describe() for f, _ in exact)
            raise UserError(f"--ema: {path} holds no EMA weights (found: {found}); drop --ema")
        pool = pool or exact  # the only weights are an EMA copy: used, and the report says so
        chosen, tensors = pool[0]
        rivals = [f for f, _ in pool[1:] if f.entry == chosen.entry]
        if rivals:
            sets = ", ".join(f.describe() for f in [chosen, *rivals])
            raise UserError(
                f"--weights {path} holds several complete sets of {arch} weights ({sets}); save the one to deploy "
                "with torch.save(model.state_dict(), path)"
            )
        others = tuple(f for f, _ in exact if f != chosen)
        state = _strip(tensors, chosen.prefix)
        return Unwrapped(state, layout, chosen, True, others, len(tensors) - len(state), declared)

    if ema and not any(f.ema for _, f, _ in partial):
        raise UserError(f"--ema: {path} holds no EMA weights (no key or name prefix says 'ema'); drop --ema")
    best = max((item for item in partial if item[1].ema or not ema), key=lambda item: item[0], default=None)
    if best is None or best[0] == 0:
        where = ", ".join("the top level" if e is None else repr(e) for e, _ in sources)
        tried = sorted({p for _, t in sources for p in _leading_parts(list(t))}, key=len)
        raise UserError(
            f"--weights {path}: no tensor names fit --arch {arch} (top-level keys: {top_keys}; tensors looked at in "
            f"{where}; prefixes tried: {', '.join(tried[:8])}); check --arch, or save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    _, chosen, tensors = best
    return Unwrapped(_strip(tensors, chosen.prefix), layout, chosen, False, declared_arch=declared)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {n[len(prefix) :]: v for n, v in tensors.items() if n.startswith(prefix)}


# ------------------------------------------------------------------------------------------ hub folders

CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 64 << 20  # label names and descriptions of a large label set fit easily


@dataclass(frozen=True)
class HubFolder:
    """A timm / Hugging Face hub folder: config.json (timm's `save_for_hf` layout) and the weights beside it."""

    folder: Path
    architecture: str
    num_classes: int | None
    pretrained_cfg: dict[str, Any]
    label_names: tuple[str, ...] | None
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: Path = Path()

    @property
    def config(self) -> Path:
        return self.folder / CONFIG_NAME


def read_hub_folder(folder: Path) -> HubFolder:
    """config.json read by timm's own parser (`load_model_config_from_path`), checked, and the weights file to read."""
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, load_model_config_from_path

    folder = Path(folder)
    config = folder / CONFIG_NAME
    fix = "give a checkpoint file, or a folder with config.json and model.safetensors (timm's save_for_hf layout)"
    if not config.is_file():
        raise UserError(f"--weights {folder} is a folder without {CONFIG_NAME}; {fix}")
    if config.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{config} is {config.stat().st_size} bytes, above {MAX_CONFIG_BYTES}; {fix}")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{config} is not readable JSON ({str(exc).splitlines()[0][:120]}); {fix}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str):
        raise UserError(f"{config} has no 'architecture' string; {fix}")
    if "pretrained_cfg" in raw and not isinstance(raw["pretrained_cfg"], dict):
        raise UserError(f"{config}: 'pretrained_cfg' must be an object; {fix}")
    try:
        pretrained_cfg, architecture, model_args = load_model_config_from_path(folder)
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise UserError(f"{config} is not a timm hub config ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(architecture, str) or not architecture:
        raise UserError(f"{config}: 'architecture' must be a model name, got {architecture!r}; {fix}")
    num_classes = pretrained_cfg.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise UserError(f"{config}: 'num_classes' must be a whole number >= 1, got {num_classes!r}")
    if not isinstance(model_args, dict):
        raise UserError(f"{config}: 'model_args' must be an object, got {type(model_args).__name__}")
    weights = next((folder / n for n in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (folder / n).is_file()), None)
    if weights is None:
        raise UserError(f"--weights {folder} has {CONFIG_NAME} but neither {HF_SAFE_WEIGHTS_NAME} nor {HF_WEIGHTS_NAME}")
    labels = _label_names(pretrained_cfg.get("label_names"), num_classes, config)
    return HubFolder(folder, architecture, num_classes, dict(pretrained_cfg), labels, dict(model_args), weights)


def _label_names(value: Any, num_classes: int | None, config: Path) -> tuple[str, ...] | None:
    """label_names as a list (index -> name) or a dict of index -> name (timm allows gaps)."""
    if value is None:
        return None
    if isinstance(value, dict):
        try:
            by_index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            raise UserError(f"{config}: 'label_names' keys must be class indices") from None
        count = num_classes if num_classes is not None else max(by_index, default=-1) + 1
        value = [by_index.get(i, str(i)) for i in range(count)]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{config}: 'label_names' must be a list of strings")
    return tuple(value)


def check_class_names(names: tuple[str, ...], num_classes: int, label: str, fix: str) -> tuple[str, ...]:
    """Class names fit the classifier: one per output, none empty, none twice."""
    if len(names) != num_classes:
        raise UserError(f"{label} has {len(names)} class names, the classifier {num_classes} outputs; {fix}")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if not name.strip():
            raise UserError(f"{label}: class name {index + 1} is empty; {fix}")
        if name in seen:
            raise UserError(f"{label}: class name {name[:80]!r} is given twice ({seen[name] + 1} and {index + 1}); {fix}")
        seen[name] = index
    return names
