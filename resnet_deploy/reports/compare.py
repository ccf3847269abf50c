"""Two reports side by side: accuracy and latency per engine, with deltas and % changes, as Markdown.

Engines are matched by name (the PyTorch reference too); engines in only one report are listed. When the
reports come from different machines, thread counts or versions, the page says so first: latency is then
not like with like.
"""

from __future__ import annotations

from typing import Any

from ..gates.environment import environment_differences
from .formats import delta, pct_change, value

# (field, label, format): "%" shows a fraction of 1 as a percentage and its delta in points
ACCURACY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("top1_agreement", "top-1 agreement", "%"),
    ("top5_agreement", "top-5 agreement", "%"),
    ("top1", "top-1 on labels", "%"),
    ("top1_drop_points", "top-1 drop (pts)", ".4g"),
    ("cosine_min", "cosine min", ".7g"),
    ("max_abs_diff", "max abs diff", ".4g"),
    ("mean_abs_diff", "mean abs diff", ".4g"),
)
LATENCY_METRICS: tuple[tuple[str, str], ...] = (("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("throughput_ips", "img/s"))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _describe(report: dict[str, Any], label: str) -> str:
    model, host = report["model"], report.get("host", {})
    return (
        f"- {label}: {model.get('arch', '?')}, weights `{str(model.get('weights_sha256', ''))[:12]}`, "
        f"{host.get('cpu', '?')}, {host.get('threads', '?')} threads, GPU {host.get('gpu') or 'none'}"
    )


def _by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in entries}


def _accuracy_rows(old: dict[str, Any], new: dict[str, Any], names: list[str]) -> list[str]:
    rows = []
    ref_old, ref_new = old["reference"].get("top1"), new["reference"].get("top1")
    if ref_old is not None or ref_new is not None:
        rows.append(
            f"| {_cell(new['reference']['name'])} (reference) | top-1 on labels | {value(ref_old, '%')} | "
            f"{value(ref_new, '%')} | {delta(ref_old, ref_new, '%')} | {pct_change(ref_old, ref_new)} |"
        )
    old_engines, new_engines = _by_name(old["engines"]), _by_name(new["engines"])
    for name in names:
        a, b = old_engines[name].get("accuracy") or {}, new_engines[name].get("accuracy") or {}
        for field, label, fmt in ACCURACY_METRICS:
            x, y = a.get(field), b.get(field)
            if x is None and y is None:
                continue
            rows.append(
                f"| {_cell(name)} | {label} | {value(x, fmt)} | {value(y, fmt)} | {delta(x, y, fmt)} | {pct_change(x, y)} |"
            )
    return rows


def _latency_rows(old: dict[str, Any], new: dict[str, Any], names: list[str]) -> list[str]:
    old_entries = _by_name([old["reference"], *old["engines"]])
    new_entries = _by_name([new["reference"], *new["engines"]])
    rows = []
    for name in names:
        old_rows = {r["batch_size"]: r for r in old_entries[name].get("latency", [])}
        new_rows = {r["batch_size"]: r for r in new_entries[name].get("latency", [])}
        for batch in sorted(set(old_rows) | set(new_rows)):
            a, b = old_rows.get(batch, {}), new_rows.get(batch, {})
            cells = [_cell(name), str(batch)]
            for field, _ in LATENCY_METRICS:
                x, y = a.get(field), b.get(field)
                cells += [value(x), value(y), pct_change(x, y)]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def compare_reports(old: dict[str, Any], new: dict[str, Any], old_label: str = "OLD", new_label: str = "NEW") -> str:
    """Markdown: the two reports' accuracy and latency side by side with deltas and % changes."""
    lines = [
        "# resnet-deploy compare",
        "",
        _describe(old, f"OLD `{_cell(old_label)}`"),
        _describe(new, f"NEW `{_cell(new_label)}`"),
        "",
    ]
    warnings = environment_differences(old, new, old_label="OLD")
    lines += [f"> ⚠️ {_cell(w)}" for w in warnings] + ([""] if warnings else [])
    old_names = [e["name"] for e in old["engines"]]
    new_names = [e["name"] for e in new["engines"]]
    both = [n for n in new_names if n in old_names]
    only_old = [n for n in old_names if n not in new_names]
    only_new = [n for n in new_names if n not in old_names]
    if only_old:
        lines.append(f"- only in OLD: {', '.join(only_old)}")
    if only_new:
        lines.append(f"- only in NEW: {', '.join(only_new)}")
    if only_old or only_new:
        lines.append("")
    lines += ["## Accuracy", "", "| engine | metric | OLD | NEW | Δ | Δ % |", "|---|---|---|---|---|---|"]
    lines += _accuracy_rows(old, new, both)
    timed = [n for n in [new["reference"]["name"], *both] if n == old["reference"]["name"] or n in both]
    lines += ["", "## Latency", ""]
    header = ["engine", "batch"] + [f"{label} {side}" for _, label in LATENCY_METRICS for side in ("OLD", "NEW", "Δ %")]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += _latency_rows(old, new, timed)
    lines += ["", "Δ % is NEW relative to OLD: for p50/p99 ms a positive change is slower, for img/s it is faster."]
    return "\n".join(lines) + "\n"
