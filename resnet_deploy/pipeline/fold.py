"""BatchNorm folding: a torch.fx pass that folds each Conv->BN (and Linear->BN) pair.

The math is `torch.nn.utils.fusion`; this module does the graph surgery, says which BatchNorms remain and
why, and verifies the folded model against the original on real inputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ..artifacts import FoldedModelArtifact, write_with_sidecar
from ..errors import CheckFailed, UserError
from ..models import LoadedModel, create_model, resolve_arch
from .parity import Parity, compare_logits

FOLD_TOLERANCE = 1e-4  # max |folded - original| / max |original| on the check inputs

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class RemainingNorm:
    name: str
    reason: str


@dataclass(frozen=True)
class FoldResult:
    folded: int
    remaining: tuple[RemainingNorm, ...]
    parity: Parity | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "folded": self.folded,
            "remaining_batchnorm": len(self.remaining),
            "remaining": [{"name": r.name, "reason": r.reason} for r in self.remaining],
        }
        if self.parity is not None:
            out.update(self.parity.as_dict())
        return out


class _Tracer(fx.Tracer):
    """Keeps every BatchNorm (incl. timm's BatchNormAct2d) and timm's no-trace modules as leaves."""

    def __init__(self) -> None:
        super().__init__()
        try:
            from timm.layers._fx import get_notrace_modules

            self._leaves = tuple(get_notrace_modules())
        except ImportError:  # pragma: no cover - timm is a dependency; keep fx usable without it
            self._leaves = ()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _BatchNorm) or (self._leaves and isinstance(m, self._leaves)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(module: nn.Module) -> fx.GraphModule:
    try:
        from timm.layers._fx import get_notrace_functions

        autowrap = tuple(get_notrace_functions())
    except ImportError:  # pragma: no cover
        autowrap = ()
    tracer = _Tracer()
    tracer._autowrap_function_ids.update(id(f) for f in autowrap)  # noqa: SLF001 - timm's no-trace functions
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # noqa: BLE001 - fx raises many types for untraceable code
        raise UserError(
            f"torch.fx cannot trace {type(module).__name__} ({str(exc).splitlines()[0][:160]}); "
            "BN folding needs a symbolically traceable model"
        ) from None
    return fx.GraphModule(tracer.root, graph, class_name=type(module).__name__)


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "placeholder":
        return "the model input"
    target = getattr(node.target, "__name__", str(node.target))
    if target in ("add", "iadd", "add_"):
        return "a residual addition"
    return f"{node.op} {target}"


def _why_not(node: fx.Node, bn: _BatchNorm, modules: dict[str, nn.Module], calls: dict[str, int]) -> str | None:
    """None if `node` (a BatchNorm) can be folded into its producer; otherwise the reason."""
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics (track_running_stats=False)"
    if len(node.args) != 1 or node.kwargs:
        return "called with extra arguments"
    producer = node.args[0]
    if not isinstance(producer, fx.Node) or producer.op != "call_module":
        src = _describe(producer, modules) if isinstance(producer, fx.Node) else "a constant"
        return f"follows {src}, not a Conv/Linear (pre-activation)"
    layer = modules[producer.target]
    if not isinstance(layer, (*_CONVS, nn.Linear)):
        return f"follows {type(layer).__name__}, not a Conv/Linear (pre-activation)"
    if len(producer.users) != 1:
        return f"the {type(layer).__name__} output is also used elsewhere ({len(producer.users)} users)"
    if calls.get(producer.target, 0) != 1:
        return f"the {type(layer).__name__} is called {calls[producer.target]} times (shared weights)"
    out_channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out_channels != bn.num_features:
        return f"channel count differs ({out_channels} vs {bn.num_features})"
    return None


def _activation_of(bn: _BatchNorm) -> nn.Module | None:
    """What a norm+act module (timm's BatchNormAct2d) does after the norm, or None for a plain BN."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if act is None and drop is None:
        return None
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _set_submodule(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def fold_batchnorm(module: nn.Module) -> tuple[fx.GraphModule, FoldResult]:
    """A copy of `module` with every foldable BatchNorm folded into the Conv/Linear before it."""
    module = copy.deepcopy(module).eval()
    gm = trace(module)
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    folded = 0
    remaining: list[RemainingNorm] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        bn = modules[node.target]
        reason = _why_not(node, bn, modules, calls)
        if reason is not None:
            remaining.append(RemainingNorm(node.target, reason))
            continue
        producer = node.args[0]
        layer = modules[producer.target]
        fused = (
            fuse_linear_bn_eval(layer, bn)
            if isinstance(layer, nn.Linear)
            else fuse_conv_bn_eval(
                layer, bn, transpose=isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
            )
        )
        _set_submodule(gm, producer.target, fused)
        modules[producer.target] = fused
        after = _activation_of(bn)
        if after is None:
            node.replace_all_uses_with(producer)
            gm.graph.erase_node(node)
        else:  # BatchNormAct2d: the norm is folded, the activation stays under the same name
            _set_submodule(gm, node.target, after)
            modules[node.target] = after
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, FoldResult(folded, tuple(remaining))


def verify(original: nn.Module, folded: nn.Module, images: np.ndarray, tolerance: float = FOLD_TOLERANCE) -> Parity:
    x = torch.from_numpy(images)
    with torch.inference_mode():
        ref = original.eval()(x).float().numpy()
        out = folded.eval()(x).float().numpy()
    return compare_logits(ref, out, tolerance)


def fold_and_verify(model: LoadedModel, images: np.ndarray) -> tuple[fx.GraphModule, FoldResult]:
    """Fold, then check against the original; CheckFailed (exit 1) when they disagree."""
    gm, result = fold_batchnorm(model.module)
    parity = verify(model.module, gm, images)
    result = FoldResult(result.folded, result.remaining, parity)
    if not parity.passed:
        raise CheckFailed(
            f"BN folding changed the logits: max relative error {parity.max_rel_diff:.3g} "
            f"(max abs {parity.max_abs_diff:.3g}) is above {parity.tolerance:g}; please report this model"
        )
    return gm, result


# ------------------------------------------------------------------------------------- persistence


def save_folded(gm: fx.GraphModule, model: LoadedModel, result: FoldResult, path: Path) -> FoldedModelArtifact:
    """Write the folded state_dict as safetensors with a sidecar that says how to rebuild it."""
    from safetensors.torch import save_file

    artifact = FoldedModelArtifact(
        path=Path(path),
        arch=str(model.arch),
        num_classes=model.num_classes,
        preprocess=model.preprocess.to_dict(),
        weights_sha256=model.weights_sha256,
        fold=result.as_dict(),
        class_names=None if model.class_names is None else list(model.class_names),
        origin=model.origin,
    )
    state = {k: v.detach().contiguous().clone() for k, v in gm.state_dict().items()}
    write_with_sidecar(Path(path), lambda tmp: save_file(state, str(tmp)), artifact.metadata())
    return artifact


def load_folded(artifact: FoldedModelArtifact) -> fx.GraphModule:
    """Rebuild the folded module: the arch, folded structurally, then the saved weights (strict)."""
    from safetensors.torch import load_file

    gm, _ = fold_batchnorm(create_model(resolve_arch(artifact.arch), artifact.num_classes))
    try:
        state = load_file(str(artifact.path), device="cpu")
        gm.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{artifact.path} does not fit {artifact.arch} after folding ({str(exc)[:160]}); fold again") from None
    return gm.eval()
