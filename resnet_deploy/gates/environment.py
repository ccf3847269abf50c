"""Whether two reports' numbers compare like with like: the host, the CPU's INT8 kind and the software versions.

Gates warn with it when a latency gate reads a baseline; `resnet-deploy compare` says it above its tables.
"""

from __future__ import annotations

from typing import Any

_HOST_KEYS = ("cpu", "machine", "cpu_count", "threads", "gpu")


def isa_summary(host: dict[str, Any]) -> str:
    isa = host.get("isa")
    return str(isa.get("summary", "unknown")) if isinstance(isa, dict) else "unknown"


_VERSION_KEYS = ("onnxruntime", "openvino", "torch", "onnx", "tensorrt")


def environment_differences(old: dict[str, Any], new: dict[str, Any], old_label: str = "baseline") -> list[str]:
    """Why latency numbers of two reports may not compare like with like (empty when they do)."""
    out = []
    old_host, new_host = old.get("host", {}), new.get("host", {})
    host = [f"{k} {old_host.get(k)!r} vs {new_host.get(k)!r}" for k in _HOST_KEYS if old_host.get(k) != new_host.get(k)]
    old_isa, new_isa = isa_summary(old_host), isa_summary(new_host)
    if old_isa != new_isa:
        host.append(f"INT8 instruction sets {old_isa!r} vs {new_isa!r}")
    if host:
        out.append(f"{old_label} is from another machine or setting (" + "; ".join(host) + "): latency is not like with like")
    old_kind, new_kind = (h.get("isa", {}).get("kind") if isinstance(h.get("isa"), dict) else None for h in (old_host, new_host))
    if old_kind != new_kind:
        out.append(
            f"{old_label} ran on a CPU of another INT8 kind ({old_kind or 'unknown'} vs {new_kind or 'unknown'}): INT8 accuracy "
            "as run differs between them (x86 without VNNI saturates U8S8 sums); compare the reference_accuracy of the models"
        )
    old_v, new_v = old.get("versions", {}), new.get("versions", {})
    versions = [f"{k} {old_v.get(k)} vs {new_v.get(k)}" for k in _VERSION_KEYS if old_v.get(k) != new_v.get(k)]
    if versions:
        out.append(f"{old_label} ran other software versions (" + "; ".join(versions) + ")")
    return out
