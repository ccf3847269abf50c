"""Runs ModelOpt's ONNX INT8 quantizer in its own Python process (see quantize.ModelOptSession).

    python -m resnet_deploy.calibration.modelopt_worker      # then one JSON job a line on stdin

One process serves many jobs (importing ModelOpt takes seconds; a mixed-precision search or `layers`
quantizes the same model many times). Each job writes the Q/DQ model with FP32 elsewhere at
output_path and, when fp16_output_path is given, the same model with FP16 elsewhere: the step
`quantize(high_precision_dtype="fp16")` runs at its end (`convert_to_f16` with I/O types kept), so
nodes_to_exclude run in FP16 there. Each job gets one reply line on the original stdout:
{"ok": true} or {"ok": false, "error": "<one line>"}. Everything else anything prints (Python or C
code) goes to stderr, so the reply channel carries replies only.
"""

from __future__ import annotations

import json
import os
import sys

from .quantize import captured_output


def quantize_job(job: dict) -> dict:
    import numpy as np

    with captured_output() as log:
        try:
            import modelopt.onnx.quantization as moq
            import onnx
            from modelopt.onnx.autocast import convert_to_f16

            moq.quantize(
                onnx_path=job["onnx_path"],
                quantize_mode="int8",
                calibration_method="max",  # one image; every activation scale is then replaced from the cache
                calibration_data={job["input_name"]: np.load(job["example"], allow_pickle=False)},
                calibration_cache_path=job["cache"],
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
                nodes_to_exclude=list(job["nodes_to_exclude"]),
                output_path=job["output_path"],
                log_level="ERROR",
            )
            if job.get("fp16_output_path"):
                model = onnx.load(job["output_path"])
                onnx.save(convert_to_f16(model, keep_io_types=True, low_precision_type="fp16"), job["fp16_output_path"])
        except Exception as exc:  # noqa: BLE001 - report any failure as one line to the parent
            detail = str(exc).splitlines()[0][:300] if str(exc) else (log.getvalue().strip().splitlines() or [""])[-1]
            return {"ok": False, "error": f"{type(exc).__name__}: {detail}"}
    return {"ok": True}


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (ONNX Runtime's C++ logs too) -> stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        replies.write(json.dumps(quantize_job(json.loads(line))) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
