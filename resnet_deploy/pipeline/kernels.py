"""A reduced-precision model's own accuracy against an engine's as it ran: whose loss is it, the model's or the CPU's?

Every FP16 and INT8 model is validated twice: by each engine as it runs here, and once under the exact ONNX
semantics of its graph (`engines.ort.exact_runner`: ONNX Runtime with graph optimizations off), its reference
accuracy, which does not depend on the CPU's INT8 instructions. When an engine agrees with PyTorch markedly less
than the model itself does, its kernels lose the difference (on x86 without VNNI: 16-bit saturation of U8S8 and
S8S8 sums), and the report says so with the cause and the fix. A model whose own agreement is below a sanity floor
is broken, whatever engine runs it.
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import sidecar_path
from ..isa import CpuIsa
from .validate import Accuracy

KERNEL_LOSS_POINTS = 0.5  # an engine this many points of top-1 agreement below its model's exact semantics is flagged
SANITY_FLOOR = 0.90  # a reduced-precision model agreeing with PyTorch on fewer images than this is broken


def loss_points(as_run: Accuracy, reference: Accuracy) -> float:
    """Points of top-1 agreement the engine loses against the model's exact semantics (negative: it gains)."""
    return (reference.top1_agreement - as_run.top1_agreement) * 100.0


def kernel_loss(
    name: str, target: str | None, made_for: str | None, as_run: Accuracy, reference: Accuracy, host: CpuIsa
) -> str | None:
    """One line when engine `name` loses more than KERNEL_LOSS_POINTS against its model's exact semantics, else None.

    `target` is the model's INT8 target, `made_for` the CPU kind an onnxruntime-target model was made for.
    """
    points = loss_points(as_run, reference)
    if round(points, 9) <= KERNEL_LOSS_POINTS:  # a loss of exactly the margin (in float) is within it
        return None
    head = (
        f"{name}: {as_run.top1_agreement * 100:.2f}% top-1 agreement as run here, {reference.top1_agreement * 100:.2f}% "
        f"under the model's exact Q/DQ semantics: the engine's kernels lose {points:.2f} points the model does not"
    )
    if not host.saturates_u8s8:
        return f"{head} (this CPU: {host.summary()}); report it, or compare the engine's reference metrics"
    cause = f"this CPU has no VNNI ({host.summary()}): its INT8 kernels sum pairs of 8-bit products in 16 bits, which saturate"
    if target == "tensorrt":
        fix = (
            "TensorRT accumulates in int32, so judge this model by its exact accuracy; for INT8 on this CPU use the "
            "onnxruntime-target model, made for it with --cpu host (the default)"
        )
    elif made_for == "no-vnni":
        fix = "the no-vnni recipe's 7-bit weights should not saturate: report it, or run the model on a VNNI CPU"
    else:
        made = "made for VNNI CPUs (--cpu vnni)" if made_for == "vnni" else "not made for this kind of CPU"
        fix = f"the model was {made}: quantize it with --cpu host (or no-vnni) for this CPU, or run it on a VNNI CPU"
    return f"{head}; {cause}; {fix}"


def broken_model(model: str, reference: Accuracy) -> str | None:
    """One line when a reduced-precision model itself agrees with PyTorch below SANITY_FLOOR, else None."""
    if reference.top1_agreement >= SANITY_FLOOR:
        return None
    return (
        f"{model} agrees with PyTorch's top-1 on only {reference.top1_agreement * 100:.2f}% of --val-data under its exact "
        f"ONNX semantics (sanity floor {SANITY_FLOOR * 100:.0f}%): the model is broken, not the CPU; try another "
        "--calib-method, --exclude-layers, or an accuracy target (--min-top1-agreement), or give --gates to set the "
        "thresholds yourself"
    )


def made_for_cpu(onnx_path: Path) -> str | None:
    """The CPU kind an onnxruntime-target INT8 model was made for, from its sidecar (None: not known or not such a model)."""
    import json

    try:
        meta = json.loads(sidecar_path(Path(onnx_path)).read_text(encoding="utf-8"))
        kind = meta["details"]["quantization"]["cpu"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return kind if isinstance(kind, str) else None
