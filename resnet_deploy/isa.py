"""The CPU's INT8 instruction sets, and which kind of CPU an INT8 model is made for.

An x86 CPU without VNNI (AVX2, or AVX-512 without VNNI) multiplies uint8 activations by int8 weights with
VPMADDUBSW, whose pairwise sums saturate at 16 bits (2 x 255 x 127 = 64770 > 32767): ONNX Runtime's U8S8
kernels and OpenVINO's INT8 kernels then compute something else than the model says, and lose accuracy
the model does not lose. VNNI (AVX-512 VNNI, AVX-VNNI), AMX and ARM's dot products accumulate in 32 bits.
ONNX Runtime's remedy for such CPUs is 7-bit weights (`reduce_range`): 2 x 255 x 64 = 32640 fits.
"""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

X86_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # as /proc/cpuinfo spells them
ARM_FLAGS = {"asimddp": "dotprod", "i8mm": "i8mm"}  # /proc/cpuinfo "Features" name -> the usual name
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # 32-bit accumulation of u8 x s8 products


class CpuKind(enum.StrEnum):
    """The kind of CPU an onnxruntime-target INT8 model is made for (`--cpu`)."""

    VNNI = "vnni"  # x86 with AVX-512 VNNI, AVX-VNNI or AMX, and ARM64: U8S8 sums do not saturate
    NO_VNNI = "no-vnni"  # x86 with AVX2 or AVX-512 but no VNNI: U8S8 sums saturate at 16 bits


CPU_CHOICES = ("host", *(k.value for k in CpuKind))


@dataclass(frozen=True)
class CpuIsa:
    """What decides INT8 arithmetic on a CPU: its architecture and the relevant instruction-set flags."""

    machine: str  # x86_64, aarch64, ...
    model: str
    flags: tuple[str, ...]  # those of X86_FLAGS / ARM_FLAGS' names the CPU has

    @property
    def is_x86(self) -> bool:
        return self.machine.lower() in ("x86_64", "amd64", "i686", "i386")

    @property
    def kind(self) -> CpuKind:
        if self.is_x86 and not VNNI_FLAGS & set(self.flags):
            return CpuKind.NO_VNNI
        return CpuKind.VNNI

    @property
    def saturates_u8s8(self) -> bool:
        return self.kind is CpuKind.NO_VNNI

    def summary(self) -> str:
        """e.g. 'x86_64: avx2; no avx512f, avx512_vnni, avx_vnni, amx_int8'."""
        wanted = X86_FLAGS if self.is_x86 else tuple(ARM_FLAGS.values()) if self.machine == "aarch64" else ()
        if not wanted:
            return self.machine
        have = [f for f in wanted if f in self.flags]
        missing = [f for f in wanted if f not in self.flags]
        return f"{self.machine}: " + "; ".join(
            [", ".join(have) or "none of the INT8 flags"] + ([f"no {', '.join(missing)}"] if have and missing else [])
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "flags": list(self.flags),
            "kind": self.kind.value,
            "u8s8_saturates": self.saturates_u8s8,
            "summary": self.summary(),
        }


def parse_cpuinfo(text: str, machine: str) -> CpuIsa:
    """The INT8-relevant flags in the text of /proc/cpuinfo (x86 `flags`, ARM `Features`)."""
    model, found = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            found.update(value.split())
    if machine.lower() == "aarch64":
        flags = tuple(name for raw, name in ARM_FLAGS.items() if raw in found)
    else:
        flags = tuple(f for f in X86_FLAGS if f in found)
    return CpuIsa(machine, model or platform.processor() or machine, flags)


def host_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuIsa:
    """This machine's CPU (without /proc/cpuinfo, e.g. on macOS: no flags known, the kind by architecture)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def parse_cpu(text: str, option: str = "--cpu") -> CpuKind | None:
    """'host' -> None (this machine's kind, decided when the model is made); 'vnni' / 'no-vnni' -> that kind."""
    value = str(text).strip().lower()
    if value == "host":
        return None
    try:
        return CpuKind(value)
    except ValueError:
        raise UserError(f"{option}: unknown CPU kind {text!r}; valid: {', '.join(CPU_CHOICES)}") from None


def mismatch(made_for: str | None, host: CpuIsa, what: str) -> str | None:
    """A warning when `what` (an INT8 model made for CPUs of kind `made_for`) runs on a host of the other kind."""
    if made_for is None or made_for == host.kind.value:
        return None
    if host.kind is CpuKind.NO_VNNI:
        return (
            f"{what} was quantized for CPUs with VNNI (8-bit weights), but this CPU ({host.summary()}) has no VNNI: its "
            "U8S8 kernels may saturate and lose accuracy the model does not lose; quantize with --cpu no-vnni (or --cpu host) "
            "for this CPU"
        )
    return (
        f"{what} was quantized for CPUs without VNNI (7-bit weights), but this CPU ({host.summary()}) has VNNI: "
        "--cpu vnni (or --cpu host) gives it 8-bit weights, at the same speed"
    )
