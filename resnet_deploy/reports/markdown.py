"""report.md: a readable page from a report dict (works on a report.json read back from disk).

The plain-text tables (per-class top-1, confusions, where the model came from) are shared with report.html.
"""

from __future__ import annotations

from typing import Any

from ..data import Preprocess
from ..engines.naming import precision_label
from ..errors import UserError
from ..gates import render
from ..gates.environment import isa_summary
from .formats import MARKDOWN, num, pct


def _latency_at(latency: list[dict[str, Any]], batch_size: int) -> dict[str, Any] | None:
    return next((row for row in latency if row["batch_size"] == batch_size), None)


def _ms_cell(row: dict[str, Any], stat: str) -> str:
    cell = f"{row[f'{stat}_ms']:.2f}"
    gpu = row.get(f"gpu_{stat}_ms")
    return cell if gpu is None else f"{cell} ({gpu:.2f})"


WORST_CLASSES = 10  # rows of the per-class table
TOP_CONFUSIONS = 10


def model_lines(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) facts about where the model came from: the weights used, preprocessing, class names."""
    lines = []
    checkpoint = model.get("checkpoint") or {}
    if checkpoint.get("description"):
        lines.append(("weights", str(checkpoint["description"])))
    try:
        text = Preprocess.from_dict(model["preprocess"]).describe()
    except (KeyError, TypeError, ValueError, UserError):
        text = str(model.get("preprocess"))
    sources = model.get("preprocess_source")
    if isinstance(sources, dict) and sources:
        grouped: dict[str, list[str]] = {}
        for name, source in sources.items():
            grouped.setdefault(str(source), []).append(str(name))
        text += " (" + "; ".join(f"{', '.join(names)}: {source}" for source, names in grouped.items()) + ")"
    lines.append(("preprocessing", text))
    if model.get("class_names"):
        lines.append(("class names", f"{len(model['class_names'])}, from {model.get('class_names_source') or '?'}"))
    return lines


def class_label(report: dict[str, Any], index: int) -> str:
    names = report["model"].get("class_names")
    return f"{names[index]} ({index})" if names and index < len(names) else str(index)


def per_class_table(report: dict[str, Any], limit: int = WORST_CLASSES) -> tuple[list[str], list[list[str]]] | None:
    """The classes with the lowest top-1 (of the reference or of any engine): header and rows of plain text."""
    ref = report["reference"].get("per_class")
    if not ref:
        return None
    samples, engines = ref["samples"], [e for e in report["engines"] if (e.get("accuracy") or {}).get("per_class")]
    columns = [ref["correct"], *(e["accuracy"]["per_class"]["correct"] for e in engines)]

    def top1(correct: list[int], c: int) -> float | None:
        return correct[c] / samples[c] if c < len(correct) else None

    def worst(c: int) -> tuple[float, float, int]:
        values = [v for v in (top1(col, c) for col in columns) if v is not None]
        return (min(values), top1(ref["correct"], c) or 0.0, c)

    shown = sorted((c for c, n in enumerate(samples) if n > 0), key=worst)[:limit]
    header = ["class", "images", f"{report['reference'].get('name', 'reference')} (reference)", *(e["name"] for e in engines)]
    rows = [[class_label(report, c), str(samples[c]), *(pct(top1(col, c)) for col in columns)] for c in shown]
    return header, rows


def confusion_table(report: dict[str, Any], limit: int = TOP_CONFUSIONS) -> tuple[list[str], list[list[str]]] | None:
    """The reference's most frequent confusions: true class, predicted class, images, share of the class."""
    ref = report["reference"].get("per_class")
    if not ref or not ref.get("confusions"):
        return None
    samples = ref["samples"]
    rows = [
        [class_label(report, t), class_label(report, p), str(n), pct(n / samples[t]) if samples[t] else "n/a"]
        for t, p, n in ref["confusions"][:limit]
    ]
    return ["true class", "predicted as", "images", "share of the class"], rows


def _markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # class names may hold a pipe


def _markdown_table(table: tuple[list[str], list[list[str]]]) -> list[str]:
    header, rows = table
    return [_markdown_row(header), "|" + "---|" * len(header), *map(_markdown_row, rows)]


def _classes_section(report: dict[str, Any]) -> list[str]:
    lines = []
    table = per_class_table(report)
    if table:
        lines += ["", f"## Per-class top-1 (the {len(table[1])} worst classes)", "", *_markdown_table(table)]
    confusions = confusion_table(report)
    if confusions:
        lines += ["", "## Most frequent confusions (reference)", "", *_markdown_table(confusions)]
    return lines


def to_markdown(report: dict[str, Any]) -> str:
    """A readable page from a report dict (works on a report.json read back from disk)."""
    model, fold, export = report["model"], report["fold"], report["export"]
    host = report.get("host", {})
    lines = [
        f"# resnet-deploy report: {model['arch']}",
        "",
        f"- weights sha256 `{model['weights_sha256'][:16]}…`, {model['num_classes']} classes, "
        f"input {'x'.join(map(str, model['input_shape']))}",
        *(f"- {label}: {text}" for label, text in model_lines(model)),
        f"- BN folding: {fold['folded']} folded, {fold['remaining_batchnorm']} remaining, "
        f"max abs diff {num(fold.get('max_abs_diff'), MARKDOWN)}",
        f"- ONNX export: opset {export['opset']}, max abs diff vs PyTorch {num(export.get('max_abs_diff'), MARKDOWN)}",
        f"- host: {host.get('cpu', '?')}, {host.get('threads', '?')} threads, GPU: {host.get('gpu') or 'none'}",
        f"- INT8 instruction sets: {isa_summary(host)}"
        + (" (no VNNI: U8S8 sums saturate at 16 bits)" if (host.get("isa") or {}).get("u8s8_saturates") else ""),
        "",
        "## Accuracy against the PyTorch reference",
        "",
        "Reduced-precision models are also measured under their exact ONNX semantics (ONNX Runtime, graph "
        "optimizations off): the model's own top-1 agreement, whatever the CPU's INT8 instructions (`exact`).",
        "",
        "| engine | precision | target | top-1 agree | exact top-1 agree | top-5 agree | max abs diff | cosine min | top-1 "
        "| top-1 drop (pts) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ref = report["reference"]
    lines.append(f"| {ref['name']} (reference) | fp32 | | 100% | | 100% | 0 | 1 | {pct(ref.get('top1'))} | |")
    for engine in report["engines"]:
        acc, exact = engine.get("accuracy"), engine.get("reference_accuracy")
        if engine.get("error"):
            lines.append(f"| {engine['name']} | {engine['precision']} | {engine['target'] or ''} | {engine['error']} |||||||")
            continue
        if acc is None:
            continue
        drop = acc.get("top1_drop_points")
        lines.append(
            f"| {engine['name']} | {precision_label(engine)} | {engine['target'] or ''} | {pct(acc['top1_agreement'])} | "
            f"{pct(exact['top1_agreement']) if exact else ''} | "
            f"{pct(acc['top5_agreement'])} | {num(acc['max_abs_diff'], MARKDOWN)} | {num(acc['cosine_min'], '.6f')} | "
            f"{pct(acc.get('top1'))} | {num(drop, '+.2f')} |"
            + ("" if engine.get("passed", True) else " **FAILED: NaN/Inf outputs**")
            + (" **kernel loss**" if engine.get("kernel_loss") else "")
        )
    losses = [e["kernel_loss"] for e in report["engines"] if e.get("kernel_loss")]
    if losses:
        lines += ["", "**The CPU's kernels, not the model, lose accuracy:**", ""] + [f"- {loss}" for loss in losses]
    lines += _classes_section(report)
    batch_sizes = sorted({row["batch_size"] for e in [ref, *report["engines"]] for row in e.get("latency", [])})
    if batch_sizes:
        lines += ["", "## Latency (ms) and throughput (images/s)", ""]
        header = "| engine | " + " | ".join(f"b{b} p50 | b{b} p99 | b{b} img/s" for b in batch_sizes) + " |"
        lines += [header, "|---|" + "---|" * (3 * len(batch_sizes))]
        for entry in [ref, *report["engines"]]:
            if not entry.get("latency"):
                continue
            cells = []
            for b in batch_sizes:
                row = _latency_at(entry["latency"], b)
                cells += (
                    ["n/a"] * 3 if row is None else [_ms_cell(row, "p50"), _ms_cell(row, "p99"), f"{row['throughput_ips']:.1f}"]
                )
            lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
        if any(row.get("gpu_p50_ms") is not None for e in report["engines"] for row in e.get("latency", [])):
            lines += ["", "GPU engines: end-to-end time with host copies (GPU compute time alone in brackets)."]
    lines += _precision_section(report)
    lines += _mixed_precision_section(report)
    lines += _serving_section(report.get("serving"))
    if report.get("stages"):
        lines += ["", "## Stages (wall seconds)", ""]
        lines += [f"- {name}: {seconds:.1f}" for name, seconds in report["stages"].items()]
    for note in report.get("notes", []):
        lines.append(f"- note: {note}")
    for warning in report.get("warnings", []):
        lines.append(f"- **warning**: {warning}")
    if report.get("failures"):
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    if report.get("gates"):
        lines += ["", render.markdown(report["gates"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _precision_section(report: dict[str, Any]) -> list[str]:
    """How each reduced-precision model was made: tool, calibration, what was quantized or kept in FP32."""
    rows = [e for e in report["engines"] if e.get("quantization")]
    if not rows:
        return []
    lines = ["", "## Reduced precision", ""]
    calibration = report.get("calibration") or {}
    if calibration:
        data = calibration.get("data") or {}
        reused = " (statistics reused from the cache)" if calibration.get("reused_cache") else ""
        lines += [
            f"Calibration: {calibration.get('samples')} images of {data.get('source', '?')}, method "
            f"{calibration.get('method')}{reused}; ranges in `calib.json`.",
            "",
        ]
    lines += [
        "| engine | tool | method | samples | nodes in INT8 / FP16 | kept in higher precision |",
        "|---|---|---|---|---|---|",
    ]
    for engine in rows:
        q = engine["quantization"]
        kept = q.get("excluded_nodes", []) if engine["precision"] == "int8" else q.get("fp32_nodes", [])
        method = q.get("method") or "max |x| only"  # FP16 reads the maxima, no range method
        if q.get("percentile") is not None:
            method = f"{method} {q['percentile']:g}"
        lines.append(
            f"| {engine['name']} | {q.get('tool', '')} | {method} | {q.get('samples', '')} | "
            f"{q.get('quantized_nodes', q.get('fp16_nodes', ''))} | {', '.join(kept) if kept else 'none'} |"
        )
    return lines


def _step_cells(step: dict[str, Any]) -> str:
    drop = step.get("top1_drop_points")
    return f"{pct(step['top1_agreement'])} | {num(drop, '+.2f')} | {'met' if step['met'] else 'missed'}"


def _mixed_precision_section(report: dict[str, Any]) -> list[str]:
    """Per engine of a searched INT8 model: target, data, steps, the nodes kept, the latency they cost."""
    rows = [e for e in report["engines"] if (e.get("quantization") or {}).get("mixed_precision") and not e.get("error")]
    if not rows:
        return []
    lines = ["", "## Mixed precision (accuracy target)"]
    for engine in rows:
        search = engine["quantization"]["mixed_precision"]
        selection, on_val = search["selection"], search.get("on_val")
        modules = {r["node"]: r.get("module") for r in search.get("sensitivity", [])}
        kept = [f"{n} ({modules[n]})" if modules.get(n) else n for n in search["excluded"]]
        status = "target met" if search["met"] else "**TARGET MISSED: best effort**"
        lines += [
            "",
            f"### {engine['name']}: {status}",
            "",
            f"- target: {search['target']['description']}, at most {search['target']['max_excluded']} nodes in higher "
            f"precision ({search['high_precision']})",
            f"- chosen on {selection['samples']} images ({selection['origin']}: {selection['source']}), disjoint from --val-data",
            f"- nodes in higher precision: {', '.join(kept) if kept else 'none'}",
        ]
        if on_val:
            lines.append(
                f"- on --val-data: top-1 agreement {pct(on_val['top1_agreement'])}"
                + ("" if on_val.get("top1_drop_points") is None else f", top-1 drop {on_val['top1_drop_points']:+.2f} points")
                + f": {'met' if on_val['met'] else '**missed**'}"
            )
        for cost in search.get("latency_cost") or []:
            lines.append(
                f"- latency cost on {cost['engine']}, batch {cost['batch_size']}: {cost['before_p50_ms']:.3f} -> "
                f"{cost['after_p50_ms']:.3f} ms p50 ({cost['cost_ms']:+.3f} ms, {num(cost.get('cost_pct'), '+.1f')}%)"
            )
        lines += [
            "",
            "| step | phase | nodes in higher precision | top-1 agreement | top-1 drop (pts) | target |",
            "|---|---|---|---|---|---|",
        ]
        for i, step in enumerate(search["steps"], 1):
            lines.append(f"| {i} | {step['phase']} | {len(step['excluded'])} | {_step_cells(step)} |")
    return lines


def _serving_section(serving: dict[str, Any] | None) -> list[str]:
    """`resnet-deploy serve-check`: agreement of the served logits, and latency and throughput per concurrency."""
    if not serving:
        return []
    server, client = serving["server"], serving.get("client", {})
    lines = [
        "",
        "## Serving (Triton)",
        "",
        f"- server: tritonserver {server.get('version') or '?'} ({server['origin']}: `{server['binary']}`); repository "
        f"`{serving.get('repository', '?')}`",
        f"- client: tritonclient {client.get('protocol', 'grpc')}, {client.get('images_per_request', 1)} image per request, "
        f"concurrency {client.get('concurrency')}, at most {client.get('requests_per_level')} requests and "
        f"{client.get('seconds_per_level')} s per level",
        "",
        "| model | engine | served vs in process: top-1 agree | max abs diff | concurrency | img/s | p50 ms | p90 ms | p99 ms "
        "| queue us | compute us | mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in serving["models"]:
        a = model["agreement"]
        check = f"{pct(a['top1_agreement'])}" + ("" if a["passed"] else " **FAILED**")
        for i, level in enumerate(model["levels"]):
            s = level["server"]
            first = [model["name"], model["engine"], check, num(a.get("max_abs_diff"), MARKDOWN)] if i == 0 else ["", "", "", ""]
            cells = first + [
                str(level["concurrency"]), num(level.get("throughput_ips"), ".1f"), num(level.get("p50_ms"), ".2f"),
                num(level.get("p90_ms"), ".2f"), num(level.get("p99_ms"), ".2f"), num(s.get("queue_us"), ".0f"),
                num(s.get("compute_us"), ".0f"), num(s.get("mean_batch"), ".2f"),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Queue and compute: Triton's statistics per request (compute = input + inference + output); mean batch: the "
        "images per execution the dynamic batcher formed.",
    ]
    lines += [f"- **FAILED**: {f}" for f in serving.get("failures", [])]
    return lines
