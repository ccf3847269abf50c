#!/usr/bin/env bash
# On a machine with an NVIDIA GPU. Two modes:
#
#   scripts/gpu-check.sh --quick   about 10 minutes on one H100/H200-class GPU, packages already installed
#                                  (`make install` + the `tensorrt` extra): scripts/gpu_quick.py under
#                                  `timeout 540`; one table, and OUT/quick/quick.json with every step's result.
#   scripts/gpu-check.sh           25-40 minutes: installs, then the whole pipeline with `--target tensorrt` on
#                                  the digits ResNet-18 and a ResNet-50, `pytest -m gpu`, and one table: engine,
#                                  precision, top-1 agreement, p50/p99 ms and throughput at batch 1/8/64/128.
#
# Written without a GPU: neither mode has run yet (README, TensorRT).
#
# Environment (all optional):
#   PYTHON=python3            interpreter for the venv (`make install`)
#   OUT=gpu-check             working folder (data, builds, reports)
#   PRECISIONS=fp32,fp16,int8 precisions to build
#   RESNET50_WEIGHTS=...      a ResNet-50 state_dict; default: seeded random weights (agreement only)
#   RESNET50_VAL=...          validation images for ResNet-50; default: the digits validation folder
#   ORT_GPU=1                 also build and time ONNX Runtime on its CUDA execution provider; 0 to skip.
#                             onnxruntime-gpu 1.24 is built for CUDA 12: this installs its CUDA-12 runtime
#                             and cuBLAS (folders of their own, beside torch's CUDA-13 libraries) but NOT its
#                             CUDA-12 cuDNN (`onnxruntime-gpu[cudnn]`): that one writes nvidia/cudnn/lib, the
#                             folder of torch's CUDA-13 cuDNN. ONNX Runtime then finds torch's cuDNN 9, or its
#                             provider refuses in one line.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu-check}
PRECISIONS=${PRECISIONS:-fp32,fp16,int8}
ORT_GPU=${ORT_GPU:-1}
BIN=.venv/bin
mkdir -p "$OUT"

if ! nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader; then
    echo "gpu-check: nvidia-smi found no NVIDIA GPU; run this on a machine that has one" >&2
    exit 2
fi
if [ "${1:-}" = "--quick" ]; then
    if [ ! -x "$BIN/python" ]; then
        echo "gpu-check --quick: no $BIN/python; install first (make install, then $BIN/pip install -e '.[tensorrt]')" >&2
        exit 2
    fi
    timeout 540 "$BIN/python" scripts/gpu_quick.py "$OUT/quick"
    status=$?
    if [ "$status" = 124 ]; then
        echo "gpu-check --quick: stopped by timeout 540; the steps done so far are in $OUT/quick/quick.json" >&2
    fi
    exit "$status"
fi
make install PYTHON="${PYTHON:-python3}" || exit 2
"$BIN/pip" install --quiet -c requirements/constraints.txt -e '.[tensorrt]' || exit 2
if [ "$ORT_GPU" = 1 ]; then  # CUDA-12 runtime and cuBLAS for onnxruntime-gpu; no CUDA-12 cuDNN (see above)
    "$BIN/pip" install --quiet -c requirements/constraints.txt 'onnxruntime-gpu[cuda]' 'nvidia-cublas-cu12~=12.0' || exit 2
fi
"$BIN/python" - <<'EOF' || exit 2
import onnxruntime
from onnxruntime.capi import build_and_package_info

from resnet_deploy.engines.trt import CudaStack, missing_message, missing_requirements

stack = CudaStack.current()
print(f"{stack.describe()}, onnxruntime {onnxruntime.__version__} (built for CUDA {build_and_package_info.cuda_version})")
if stack.mismatch():
    print(stack.mismatch())
missing = missing_requirements()
if missing:
    raise SystemExit(f"gpu-check: {missing_message(missing)}")
EOF

status=0
REPORTS=()
run_build() {  # label, then the build arguments
    local label=$1
    shift
    echo "== build: $label"
    if "$BIN/resnet-deploy" build --force --batch-sizes 1,8,64,128 --warmup 5 --iterations 50 \
        --timing-cache "$OUT/timing.cache" "$@"; then
        REPORTS+=("$label=$OUT/$label/report.json")
    else
        echo "gpu-check: build $label failed" >&2
        status=1
    fi
}

# 1. the digits ResNet-18 (trained here, ~99% top-1)
DATA=$OUT/digits-data
[ -f "$DATA/weights.pth" ] || "$BIN/python" -m resnet_deploy.examples.digits --out "$DATA" || exit 1
DIGITS=(--arch resnet18 --weights "$DATA/weights.pth" --input-size 3x32x32
        --calib-data "$DATA/calib" --val-data "$DATA/val" --precision "$PRECISIONS")
run_build digits --target onnxruntime,tensorrt --require-engine --cuda-graph "${DIGITS[@]}" --out "$OUT/digits"

# 2. ResNet-50 at 224x224 (random weights unless RESNET50_WEIGHTS is given: then agreement is what counts)
R50_WEIGHTS=${RESNET50_WEIGHTS:-$OUT/resnet50-random.pth}
if [ ! -f "$R50_WEIGHTS" ]; then
    "$BIN/python" -c "
import timm, torch
torch.manual_seed(0)
model = timm.create_model('resnet50', pretrained=False, zero_init_last=False)
torch.save(model.state_dict(), '$R50_WEIGHTS')" || exit 1
fi
R50_VAL=${RESNET50_VAL:-$DATA/val}
R50=(--arch resnet50 --weights "$R50_WEIGHTS" --calib-data "$R50_VAL" --val-data "$R50_VAL" --precision "$PRECISIONS")
run_build resnet50 --target onnxruntime,tensorrt --require-engine --cuda-graph "${R50[@]}" --out "$OUT/resnet50"

# 3. ONNX Runtime on its CUDA execution provider, to compare with TensorRT
if [ "$ORT_GPU" = 1 ]; then
    run_build resnet50-ort-cuda --target onnxruntime --providers cuda "${R50[@]}" --out "$OUT/resnet50-ort-cuda"
fi

echo "== pytest -m gpu"
"$BIN/python" -m pytest -m gpu -q -rs || status=1

"$BIN/python" - "${REPORTS[@]}" <<'EOF'
import json
import sys

BATCHES = (1, 8, 64, 128)
header = ["model", "engine", "precision", "top-1 agree"]
for b in BATCHES:
    header += [f"b{b} p50/p99 ms", f"b{b} img/s"]
rows = []
for item in sys.argv[1:]:
    label, path = item.split("=", 1)
    report = json.load(open(path))
    for engine in [report["reference"] | {"precision": "fp32", "reference": True}, *report["engines"]]:
        acc = engine.get("accuracy")
        agree = "reference" if engine.get("reference") else ("not built" if acc is None else f"{acc['top1_agreement']:.2%}")
        cells = [label, engine["name"], engine["precision"], agree]
        latency = {row["batch_size"]: row for row in engine.get("latency", [])}
        for b in BATCHES:
            row = latency.get(b)
            if row is None:
                cells += ["", ""]
                continue
            gpu = f" (gpu {row['gpu_p50_ms']:.2f})" if row.get("gpu_p50_ms") is not None else ""
            cells += [f"{row['p50_ms']:.2f}/{row['p99_ms']:.2f}{gpu}", f"{row['throughput_ips']:.0f}"]
        rows.append(cells)
widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
print()
for r in [header, ["-" * w for w in widths], *rows]:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
print("\nend-to-end times include the host<->device copies; (gpu x) is the engine's compute time alone.")
EOF
exit $status
