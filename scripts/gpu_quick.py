"""The quick GPU check (`scripts/gpu-check.sh --quick`): the TensorRT path end to end in under 10 minutes on one
H100/H200-class GPU with the packages already installed. gpu-check.sh runs it under `timeout 540`.

    python scripts/gpu_quick.py OUT

Steps (each timed; OUT/quick.json is rewritten after every step, so a timeout still leaves the results so far):
preflight (CUDA versions of torch, the driver and TensorRT); a seeded digits ResNet-18 (random weights, no
training) built for TensorRT in FP32, FP16 and INT8 (from the FP16-elsewhere twin) with profile 1/8/32, a
timing cache and optimization level 2, plus an INT8 engine of the FP32-elsewhere Q/DQ model; each engine
against ONNX Runtime on the CPU with per-precision tolerances, and the engine inspector showing INT8/FP16
layers; one build with version-compatible, same-cc, TF32 and a 64 MiB workspace, loaded back; the runner on
batches 1 -> 8 -> 1 with the CUDA graph; a tampered manifest and a truncated engine refused; ONNX Runtime's
CUDA and TensorRT providers (success or a clean one-line refusal); `pytest -m gpu -x`; a ResNet-50 FP16 + INT8
build at 224x224 with profile 1..8. Prints one table at the end.

Written without a GPU: none of it has run yet. The tolerances are first guesses for random-weight models
(a relative max difference against ONNX Runtime on the same ONNX, and the minimum cosine of the logit rows).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# per precision: (max |engine - onnxruntime| / max |onnxruntime|, min cosine of the rows)
TOLERANCE = {"fp32": (1e-3, 0.99999), "fp16": (3e-2, 0.999), "int8": (1e-1, 0.99)}
PYTEST_SECONDS = 200  # pytest -m gpu -x gets at most this much of the 540 s


class Refused(Exception):
    """A step that ended in a clean, expected refusal (e.g. a provider that cannot start here)."""


class QuickCheck:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def step(self, name: str, fn, *args) -> object:
        began = time.perf_counter()
        result = None
        try:
            result = fn(*args)
            status, detail = "ok", result if isinstance(result, str) else ""
        except Refused as exc:
            status, detail = "refused", str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is a row of the table, the check goes on
            status, detail = "FAILED", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
        self.rows.append({"step": name, "status": status, "seconds": round(time.perf_counter() - began, 1), "detail": detail})
        print(f"[{time.perf_counter() - self.started:6.1f} s] {status:7} {name}: {detail}", flush=True)
        self.write()
        return result if status == "ok" else None

    def write(self) -> None:
        data = {"rows": self.rows, "seconds": round(time.perf_counter() - self.started, 1), "passed": self.passed}
        tmp = self.out / "quick.json.partial"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.out / "quick.json")

    @property
    def passed(self) -> bool:
        return all(row["status"] != "FAILED" for row in self.rows)

    def table(self) -> None:
        rows = [{"step": "step", "status": "status", "seconds": "s", "detail": "detail"}, *self.rows]
        widths = {key: max(len(str(row[key])) for row in rows) for key in ("step", "status", "seconds")}
        print()
        for row in rows:
            print("  ".join([*(str(row[key]).ljust(width) for key, width in widths.items()), str(row["detail"])]))
        verdict = "passed" if self.passed else "FAILED"
        print(f"\n{verdict} in {time.perf_counter() - self.started:.0f} s; results in {self.out / 'quick.json'}")


# ------------------------------------------------------------------------------------------- steps


def preflight() -> str:
    import onnxruntime
    from onnxruntime.capi import build_and_package_info

    from resnet_deploy.engines.trt import CudaStack, missing_message, missing_requirements

    stack = CudaStack.current()
    print(f"{stack.describe()}, onnxruntime {onnxruntime.__version__} (built for CUDA {build_and_package_info.cuda_version})")
    mismatch = stack.mismatch()
    if mismatch:
        print(mismatch)
    missing = missing_requirements()
    if missing:
        raise RuntimeError(missing_message(missing))
    return stack.describe() + (f"; {mismatch}" if mismatch else "")


def seeded_model(out: Path, arch: str, num_classes: int) -> Path:
    """Random weights (seeded), with BatchNorm statistics that are not the identity, so that folding matters."""
    import torch

    from resnet_deploy.models import create_model, resolve_arch

    torch.manual_seed(0)
    model = create_model(resolve_arch(arch), num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = out / f"{arch}-seeded.pth"
    torch.save(model.state_dict(), path)
    return path


def cli_build(out: Path, log: Path, *args: str) -> str:
    command = [str(BIN / "resnet-deploy"), "build", "--force", "--quiet", "--require-engine", *args, "--out", str(out)]
    with log.open("w") as stream:
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        raise RuntimeError(f"resnet-deploy build exited {code}; see {log}")
    report = json.loads((out / "report.json").read_text())
    rows = [e for e in report["engines"] if e["backend"] == "tensorrt"]
    if not rows or any(e["error"] for e in rows):
        raise RuntimeError(f"TensorRT engines missing or failed: {[(e['name'], e['error']) for e in rows]}")
    return ", ".join(f"{e['name']} {e['accuracy']['top1_agreement']:.2%}" for e in rows)


def images(folder: Path, input_size: tuple[int, int, int], n: int) -> np.ndarray:
    from resnet_deploy.data import Preprocess, first_images, open_dataset

    return first_images(open_dataset(folder, Preprocess(input_size=input_size)), n)


def compare(engine: Path, onnx: Path, batch: np.ndarray) -> str:
    """The engine against ONNX Runtime (CPU) on the same ONNX, and the data types the engine's layers compute in."""
    from resnet_deploy.artifacts import EngineArtifact, OnnxArtifact
    from resnet_deploy.engines.ort import OrtRunner
    from resnet_deploy.engines.trt import TensorRTRunner, engine_layer_datatypes

    model = OnnxArtifact.read(onnx)
    precision = EngineArtifact.read(engine).precision
    with OrtRunner(onnx, "cpu", model.precision, model.target) as runner:
        ref = runner.infer(batch)
    with TensorRTRunner(engine) as runner:
        out = runner.infer(batch)
    rel = float(np.abs(out - ref).max() / np.abs(ref).max())
    cosine = float(np.min(np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))))
    datatypes = engine_layer_datatypes(engine)
    max_rel, min_cosine = TOLERANCE[precision]
    detail = f"rel {rel:.2e} (<= {max_rel:g}), cosine {cosine:.6f} (>= {min_cosine:g}), layers {datatypes}"
    if rel > max_rel or cosine < min_cosine:
        raise RuntimeError(detail)
    if precision in ("fp16", "int8") and not datatypes.get(precision):
        raise RuntimeError(f"no {precision} layers in the engine: {detail}")
    return detail


def extra_int8_engine(digits: Path, out: Path) -> Path:
    """The INT8 engine of the FP32-elsewhere Q/DQ model (the build made its twin's)."""
    from resnet_deploy.artifacts import OnnxArtifact
    from resnet_deploy.engines.trt import BatchProfile, TensorRTOptions, build_engine

    model = OnnxArtifact.read(digits / "model.int8-tensorrt.onnx")
    options = TensorRTOptions(builder_optimization_level=2, timing_cache=out / "timing.cache")
    return build_engine(model, out / "extra" / "model.int8-fp32.engine", options, BatchProfile(1, 8, 32)).path


def version_compatible(digits: Path, out: Path, batch: np.ndarray) -> str:
    from resnet_deploy.artifacts import OnnxArtifact
    from resnet_deploy.engines.trt import BatchProfile, HardwareCompat, TensorRTOptions, TensorRTRunner, build_engine

    options = TensorRTOptions(
        workspace_mib=64, tf32=True, version_compatible=True, hardware_compat=HardwareCompat.SAME_CC, builder_optimization_level=2
    )
    model = OnnxArtifact.read(digits / "model.fp32.onnx")
    engine = build_engine(model, out / "extra" / "vc.engine", options, BatchProfile(1, 8, 8))
    with TensorRTRunner(engine.path) as runner:
        logits = runner.infer(batch[:8])
    if not np.isfinite(logits).all():
        raise RuntimeError("non-finite outputs")
    return f"built {engine.build_seconds:.1f} s, loaded back, batch 8 ran"


def cuda_graph(engine: Path, batch: np.ndarray) -> str:
    from resnet_deploy.engines.trt import TensorRTRunner

    with TensorRTRunner(engine, cuda_graph=True) as runner:
        first = runner.infer(batch[:1])
        runner.infer(batch[:8])
        started = time.perf_counter()
        again = runner.infer(batch[:1])
        end_to_end = (time.perf_counter() - started) * 1e3
        graph, device = runner.describe()["cuda_graph"], runner.device_ms()
    if graph != "batch 1":
        raise RuntimeError(f"cuda_graph: {graph}")
    if not np.array_equal(first, again):
        raise RuntimeError("batch 1 after batch 8 differs from the first batch 1")
    if not 0 < device <= end_to_end:
        raise RuntimeError(f"device_ms {device:.3f} not within the end-to-end {end_to_end:.3f} ms")
    return f"1 -> 8 -> 1 equal; device {device:.3f} ms <= end-to-end {end_to_end:.3f} ms"


def refusals(engine: Path, out: Path) -> str:
    from resnet_deploy.artifacts import sha256_file, sidecar_path
    from resnet_deploy.engines.trt import TensorRTRunner
    from resnet_deploy.errors import CheckFailed, UserError

    folder = out / "tampered"
    folder.mkdir(exist_ok=True)
    copy = folder / engine.name
    shutil.copy(engine, copy)
    manifest = json.loads(sidecar_path(engine).read_text())
    sidecar_path(copy).write_text(json.dumps({**manifest, "tensorrt_version": "9.0.0.1"}))
    said = []
    for label, change, kind in [
        ("tampered manifest", None, UserError),
        ("truncated engine", "truncate", UserError),
        ("truncated engine, manifest re-signed", "resign", CheckFailed),
    ]:
        if change == "truncate":
            sidecar_path(copy).write_text(json.dumps(manifest))
            copy.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
        elif change == "resign":
            sidecar_path(copy).write_text(json.dumps({**manifest, "sha256": sha256_file(copy)}))
        try:
            with TensorRTRunner(copy):
                pass
        except kind as exc:
            if "\n" in str(exc):
                raise RuntimeError(f"{label}: a message of several lines") from None
            said.append(f"{label}: {str(exc)[:80]}...")
            continue
        raise RuntimeError(f"{label} was not refused")
    return " | ".join(said)


def ort_provider(providers: str, onnx: Path, batch: np.ndarray, out: Path) -> str:
    from resnet_deploy.artifacts import OnnxArtifact
    from resnet_deploy.engines.ort import OrtRunner, OrtTensorrtOptions, parse_providers
    from resnet_deploy.errors import MissingDependency

    model = OnnxArtifact.read(onnx)
    runner = OrtRunner(
        onnx, providers, model.precision, model.target, parse_providers(providers), None,
        OrtTensorrtOptions(profile=(1, 8, 32), cache_root=out / "ort-tensorrt-cache"),
    )  # fmt: skip
    try:
        runner.__enter__()
    except MissingDependency as exc:
        if "\n" in str(exc):
            raise RuntimeError("a refusal of several lines") from None
        raise Refused(str(exc)) from None
    try:
        logits = runner.infer(batch)
        label = " (simulated INT8)" if runner.simulated_int8 else ""
    finally:
        runner.__exit__(None, None, None)
    with OrtRunner(onnx, "cpu", model.precision, model.target) as cpu:
        ref = cpu.infer(batch)
    agree = float((logits.argmax(1) == ref.argmax(1)).mean())
    return f"ran{label}; top-1 agreement with the CPU {agree:.2%}"


def gpu_pytest(budget: float) -> str:
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-m", "gpu", "-x", "-q", "-p", "no:cacheprovider", "tests/test_trt_gpu.py"],
            cwd=REPO, capture_output=True, text=True, timeout=budget,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"pytest -m gpu -x did not finish within {budget:.0f} s") from None
    last = (result.stdout.strip().splitlines() or [""])[-1]
    if result.returncode != 0:
        raise RuntimeError(last)
    return last


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-check/quick").absolute()
    out.mkdir(parents=True, exist_ok=True)
    check = QuickCheck(out)
    if check.step("preflight", preflight) is None:
        check.table()
        return 2

    from resnet_deploy.examples import digits as digits_example

    data = check.step("digits images", lambda: digits_example.write_images(out / "data"))
    weights = check.step("seeded ResNet-18 (no training)", seeded_model, out, "resnet18", 10)
    digits = out / "digits"
    common = ["--timing-cache", str(out / "timing.cache"), "--builder-optimization-level", "2", "--engines", "onnxruntime"]
    built = data and weights and check.step(
        "digits build fp32/fp16/int8, profile 1/8/32, --cuda-graph",
        cli_build, digits, out / "digits.log",
        "--arch", "resnet18", "--weights", str(weights), "--input-size", "3x32x32",
        "--calib-data", str(data["calib"]), "--val-data", str(data["val"]), "--calib-size", "128",
        "--precision", "fp32,fp16,int8", "--target", "tensorrt", "--batch-sizes", "1,8,32",
        "--warmup", "3", "--iterations", "20", "--cuda-graph", *common,
    )  # fmt: skip
    if built:
        batch = images(data["val"], (3, 32, 32), 32)
        for engine, onnx in [
            ("model.fp32.engine", "model.fp32.onnx"),
            ("model.fp16.engine", "model.fp16.onnx"),
            ("model.int8.engine", "model.int8-tensorrt.fp16.onnx"),  # built from the FP16-elsewhere twin
        ]:
            check.step(f"{engine} vs onnxruntime (cpu)", compare, digits / engine, digits / onnx, batch)
        extra = check.step("INT8 engine of the FP32-elsewhere Q/DQ model", extra_int8_engine, digits, out)
        if extra:
            check.step("model.int8-fp32.engine vs onnxruntime (cpu)", compare, extra, digits / "model.int8-tensorrt.onnx", batch)
        check.step("version-compatible, same-cc, TF32, 64 MiB workspace", version_compatible, digits, out, batch)
        check.step("CUDA graph, batches 1 -> 8 -> 1", cuda_graph, digits / "model.fp32.engine", batch)
        check.step("tampered manifest, truncated engine", refusals, digits / "model.fp32.engine", out)
        for providers in ("cuda", "tensorrt"):
            for onnx in ("model.fp32.onnx", "model.int8-tensorrt.onnx"):
                check.step(f"onnxruntime {providers} provider, {onnx}", ort_provider, providers, digits / onnx, batch, out)
    check.step("pytest -m gpu -x", gpu_pytest, PYTEST_SECONDS)
    r50 = check.step("seeded ResNet-50", seeded_model, out, "resnet50", 10)
    if data and r50:
        check.step(
            "ResNet-50 fp16 + int8 at 224, profile 1..8",
            cli_build, out / "resnet50", out / "resnet50.log",
            "--arch", "resnet50", "--weights", str(r50), "--calib-data", str(data["calib"]), "--val-data", str(data["val"]),
            "--calib-size", "64", "--precision", "fp16,int8", "--target", "tensorrt", "--batch-sizes", "1,8",
            "--batch-size", "8", "--warmup", "3", "--iterations", "20", *common,
        )  # fmt: skip
    check.table()
    return 0 if check.passed else 1


if __name__ == "__main__":
    sys.exit(main())
