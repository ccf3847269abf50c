"""report.html: one self-contained page (no scripts, no external files; plots embedded as base64 PNG).

`render_html(report)` works on a report dict as written to report.json, so a page can be rendered again
from a report read back from disk (`resnet-deploy report REPORT.json --html OUT.html`).

Plots use matplotlib's object API (`Figure` + the Agg canvas, never pyplot's global figures) inside a
style context, so rendering a report changes no global matplotlib state.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterator
from typing import Any

from ..engines.naming import precision_label
from .formats import num, pct
from .markdown import confusion_table, model_lines, per_class_table

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# In the throughput and accuracy-vs-speed plots the colour says which model (precision, and the INT8 recipe's
# target) and the marker and line which backend runs it, so the same model on ONNX Runtime and on OpenVINO
# shows as a pair. Models and backends not listed take the remaining colours / the last style.
MODEL_COLORS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "bf16": "#9467bd", "int8": "#ff7f0e", "int8-tensorrt": "#d62728"}
BACKEND_STYLES = {"pytorch": ("D", ":"), "onnxruntime": ("o", "-"), "openvino": ("s", "--"), "tensorrt": ("^", "-.")}
LEGEND_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em; color: #1b1b1b; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
td.text { white-space: nowrap; } td.text:last-child { white-space: normal; }
th { background: #f5f5f5; }
.pass { color: #17703a; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.warn { background: #fff4d6; border-left: 4px solid #e0a100; padding: .4em .8em; }
.bar { background: #4c78a8; height: .8em; display: inline-block; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: .9em; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .25em; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """Cells are already escaped HTML; the first `text_columns` are left-aligned.

    A row shorter than the header ends in a left-aligned cell spanning the remaining columns (a message).
    """
    head = f"<thead><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr></thead>" if any(header) else ""

    def cells(row: list[str]) -> str:
        out = []
        for i, c in enumerate(row):
            span = len(header) - len(row) + 1 if header and i == len(row) - 1 and len(row) < len(header) else 1
            if span > 1:
                out.append(f'<td class="text" colspan="{span}">{c}</td>')
            else:
                out.append(f'<td class="text">{c}</td>' if i < text_columns else f"<td>{c}</td>")
        return "".join(out)

    body = "".join(f"<tr>{cells(row)}</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------------------- plots


def _timed_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference and every engine that has latency rows, in report order."""
    return [e for e in [report["reference"], *report["engines"]] if e.get("latency")]


def distribution_entries(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries that get a latency distribution plot: those whose report kept the raw samples."""
    return [e for e in _timed_entries(report) if any(row.get("samples_ms") for row in e["latency"])]


class _Plots:
    """Makes figures inside the style context and returns them as <figure> HTML."""

    def __init__(self) -> None:
        from matplotlib import style

        self._style = style

    def render(self, kind: str, caption: str, draw, figsize: tuple[float, float], **attrs: str) -> str:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with self._style.context(STYLE):
            fig = Figure(figsize=figsize, layout="constrained")
            FigureCanvasAgg(fig)
            draw(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        extra = "".join(f' data-{k}="{_esc(v)}"' for k, v in attrs.items())
        return (
            f'<figure><img class="plot" data-plot="{kind}"{extra} alt="{_esc(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_esc(caption)}</figcaption></figure>'
        )


def _draw_distribution(entry: dict[str, Any]):
    rows = [row for row in entry["latency"] if row.get("samples_ms")]

    def draw(fig) -> None:
        axes = fig.subplots(1, len(rows), squeeze=False)[0]
        for ax, row in zip(axes, rows):
            samples = row["samples_ms"]
            ax.hist(samples, bins=min(40, max(5, len(samples) // 3)), color=COLORS[0], alpha=0.8)
            for key, color, label in (("p50_ms", "#333333", "p50"), ("p99_ms", COLORS[1], "p99")):
                if row.get(key) is not None:
                    ax.axvline(row[key], color=color, linestyle="--", linewidth=1, label=f"{label} {row[key]:.3g} ms")
            ax.set_title(f"batch {row['batch_size']} ({len(samples)} calls)")
            ax.set_xlabel("ms per call")
            ax.legend(loc="upper right", fontsize=8)
        axes[0].set_ylabel("calls")
        fig.suptitle(entry["name"])

    return draw, (min(3.4 * len(rows), 11.0), 2.8)


def _entry_style(entry: dict[str, Any], index: int) -> dict[str, str]:
    """Colour by model, marker and line by backend (the reference is the black diamond)."""
    backend = (entry.get("backend") or "pytorch").split("-")[0]
    if "backend" not in entry:  # the PyTorch reference
        return {"color": "#000000", "marker": "D", "linestyle": ":"}
    model = entry.get("precision", "") + (f"-{entry['target']}" if entry.get("target") == "tensorrt" else "")
    spare = [c for c in COLORS if c not in MODEL_COLORS.values()] or list(COLORS)
    color = MODEL_COLORS.get(model, spare[index % len(spare)])
    marker, linestyle = BACKEND_STYLES.get(backend, ("v", "-"))
    return {"color": color, "marker": marker, "linestyle": linestyle}


def _draw_throughput(entries: list[dict[str, Any]]):
    def draw(fig) -> None:
        ax = fig.subplots()
        sizes = sorted({row["batch_size"] for e in entries for row in e["latency"]})
        for i, entry in enumerate(entries):
            rows = sorted((r for r in entry["latency"] if r.get("throughput_ips") is not None), key=lambda r: r["batch_size"])
            ax.plot(
                [r["batch_size"] for r in rows],
                [r["throughput_ips"] for r in rows],
                label=entry["name"],
                **_entry_style(entry, i),
            )
        if len(sizes) > 2 and sizes[-1] / sizes[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_ylim(bottom=0)
        ax.legend(**LEGEND_OUTSIDE)

    return draw, (8.4, 3.4)


def _speed_batch(entries: list[dict[str, Any]]) -> int | None:
    common = set.intersection(*({row["batch_size"] for row in e["latency"]} for e in entries)) if entries else set()
    return min(common) if common else None


def _scatter_points(report: dict[str, Any]) -> tuple[list[tuple[str, float, float, dict[str, str]]], str, int | None]:
    """(name, p50 ms, accuracy %, style) per timed entry with an accuracy number; the y label; the batch size."""
    entries = _timed_entries(report)
    batch = _speed_batch(entries)
    labelled = report["reference"].get("top1") is not None
    points = []
    for i, entry in enumerate(entries):
        row = next((r for r in entry["latency"] if r["batch_size"] == batch), None)
        if row is None or row.get("p50_ms") is None:
            continue
        if entry is report["reference"]:
            accuracy = entry.get("top1") if labelled else 1.0
        else:
            acc = entry.get("accuracy") or {}
            accuracy = acc.get("top1") if labelled else acc.get("top1_agreement")
        if accuracy is not None:
            points.append((entry["name"], row["p50_ms"], accuracy * 100.0, _entry_style(entry, i)))
    label = "top-1 accuracy on labels (%)" if labelled else "top-1 agreement with the reference (%)"
    return points, label, batch


def _draw_scatter(points: list[tuple[str, float, float, dict[str, str]]], ylabel: str, batch: int):
    def draw(fig) -> None:
        ax = fig.subplots()
        for name, ms, accuracy, style in points:
            ax.scatter([ms], [accuracy], s=60, color=style["color"], marker=style["marker"], label=name, zorder=3)
        ax.legend(**LEGEND_OUTSIDE)  # labels beside the points would overlap when engines agree equally well
        ax.set_xlabel(f"p50 latency at batch {batch} (ms), lower is faster")
        ax.set_ylabel(ylabel)
        fastest, slowest = min(ms for _, ms, *_ in points), max(ms for _, ms, *_ in points)
        if slowest / fastest > 20:  # e.g. an INT8 engine next to eager PyTorch: log scale keeps both readable
            ax.set_xscale("log")
            ax.set_xlim(fastest / 1.5, slowest * 2.5)
        else:
            ax.set_xlim(left=0, right=slowest * 1.3)
        low = min(a for _, _, a, _ in points)
        ax.set_ylim(max(0.0, low - max(1.0, (100 - low) * 0.5)), 100.5)

    return draw, (8.4, 3.6)


SENSITIVITY_BARS = 40  # the most sensitive nodes shown in the bar chart


def _draw_sensitivity(rows: list[dict[str, Any]], excluded: set[str]):
    """Horizontal bars, most sensitive at the top: the SQNR each node adds and, when measured (layers.json),
    the top-1 agreement quantizing it costs. Nodes left in higher precision are drawn in red."""
    rows = rows[:SENSITIVITY_BARS]
    with_drop = any(r.get("top1_agreement_drop_points") is not None for r in rows)

    def draw(fig) -> None:
        axes = fig.subplots(1, 2 if with_drop else 1, squeeze=False, sharey=True)[0]
        labels = [f"{r['node']} ({r['module']})" if r.get("module") else r["node"] for r in rows]
        colors = [COLORS[1] if r["node"] in excluded else COLORS[0] for r in rows]
        positions = list(range(len(rows)))
        axes[0].barh(positions, [math.nan if r.get("sqnr_db") is None else r["sqnr_db"] for r in rows], color=colors)
        axes[0].set_xlabel("SQNR the node adds (dB), lower is worse")
        axes[0].set_yticks(positions, labels, fontsize=7)
        axes[0].invert_yaxis()
        if with_drop:
            axes[1].barh(positions, [r.get("top1_agreement_drop_points") or 0.0 for r in rows], color=colors)
            axes[1].set_xlabel("top-1 agreement quantizing it costs (points)")
        if excluded:
            axes[0].set_title("red: left in higher precision", fontsize=8, loc="left")

    return draw, (9.0 if with_drop else 7.0, max(2.4, 0.2 * len(rows) + 1.0))


def plot_figures(report: dict[str, Any]) -> Iterator[str]:
    """Every plot of the report as <figure> HTML."""
    plots = _Plots()
    for entry in distribution_entries(report):
        draw, size = _draw_distribution(entry)
        yield plots.render("latency-distribution", f"latency distribution: {entry['name']}", draw, size, engine=entry["name"])
    entries = _timed_entries(report)
    if entries:
        draw, size = _draw_throughput(entries)
        yield plots.render("throughput", "throughput vs batch size", draw, size)
    points, ylabel, batch = _scatter_points(report)
    if points:
        draw, size = _draw_scatter(points, ylabel, batch)
        yield plots.render(
            "accuracy-vs-speed", "accuracy vs speed (each engine one point, the PyTorch reference included)", draw, size
        )


# ------------------------------------------------------------------------------------------ sections


def _model_section(report: dict[str, Any]) -> str:
    model, fold, export = report["model"], report.get("fold", {}), report.get("export", {})
    val = report.get("data", {}).get("val", {})
    rows = [
        ["architecture", _esc(model.get("arch"))],
        ["weights sha256", f"<code>{_esc(model.get('weights_sha256', ''))}</code>"],
        ["classes", _esc(model.get("num_classes"))],
        ["input", _esc("x".join(map(str, model.get("input_shape", []))))],
        ["BN folding", _esc(f"{fold.get('folded')} folded, {fold.get('remaining_batchnorm')} remaining, "
                            f"max abs diff {num(fold.get('max_abs_diff'), '.3g')}")],
        ["ONNX export", _esc(f"opset {export.get('opset')}, max abs diff vs PyTorch {num(export.get('max_abs_diff'), '.3g')}")],
        ["validation data", _esc(f"{val.get('path', '?')}: {val.get('candidates', '?')} files, "
                                 f"labels: {'yes' if val.get('labels') else 'no'}, skipped: {val.get('skipped', 0)}")],
    ]  # fmt: skip
    rows[3:3] = [[_esc(label), _esc(text)] for label, text in model_lines(model)]
    return "<h2>Model</h2>" + _table(["", ""], rows, text_columns=2)


def _classes_section(report: dict[str, Any]) -> str:
    """The worst classes' top-1 per engine, and the reference's most frequent confusions (labelled data)."""
    parts = []
    table = per_class_table(report)
    if table:
        header, rows = table
        parts.append(f"<h2>Per-class top-1 (the {len(rows)} worst classes)</h2>")
        parts.append(_table([_esc(h) for h in header], [[_esc(c) for c in row] for row in rows]))
    confusions = confusion_table(report)
    if confusions:
        header, rows = confusions
        parts.append("<h2>Most frequent confusions (reference)</h2>")
        parts.append(_table([_esc(h) for h in header], [[_esc(c) for c in row] for row in rows], text_columns=2))
    return "".join(parts)


def _stages_section(report: dict[str, Any]) -> str:
    stages = report.get("stages") or {}
    if not stages:
        return ""
    longest = max(stages.values()) or 1.0
    rows = [
        [_esc(name), f"{seconds:.2f}", f'<span class="bar" style="width:{max(1, round(200 * seconds / longest))}px"></span>']
        for name, seconds in stages.items()
    ]
    total = sum(stages.values())
    return f"<h2>Stages</h2><p>{total:.1f} s in all.</p>" + _table(["stage", "seconds", ""], rows)


def _accuracy_section(report: dict[str, Any]) -> str:
    ref = report["reference"]
    header = ["engine", "precision", "samples", "top-1 agree", "exact top-1 agree", "top-5 agree", "max abs diff",
              "mean abs diff", "cosine min", "cosine mean", "top-1", "top-1 drop (pts)", "NaN/Inf"]  # fmt: skip
    rows = [
        [f"{_esc(ref['name'])} (reference)", "fp32", "", "100%", "", "100%", "0", "0", "1", "1", pct(ref.get("top1")), "", ""]
    ]
    for engine in report["engines"]:
        acc = engine.get("accuracy")
        if engine.get("error") or acc is None:
            why = engine.get("error") or "not validated"
            rows.append([_esc(engine["name"]), _esc(engine.get("precision", "")), f'<span class="fail">{_esc(why)}</span>'])
            continue
        nonfinite = acc.get("nonfinite_outputs") or 0
        exact = engine.get("reference_accuracy")
        agree = pct(acc.get("top1_agreement"))
        rows.append([
            _esc(engine["name"]), _esc(precision_label(engine)), _esc(acc.get("samples", "")),
            f'<span class="fail">{agree} (kernel loss)</span>' if engine.get("kernel_loss") else agree,
            pct(exact.get("top1_agreement")) if exact else "", pct(acc.get("top5_agreement")),
            num(acc.get("max_abs_diff"), ".3g"),
            num(acc.get("mean_abs_diff"), ".3g"), num(acc.get("cosine_min"), ".6f"), num(acc.get("cosine_mean"), ".6f"),
            pct(acc.get("top1")), num(acc.get("top1_drop_points"), "+.2f"),
            f'<span class="fail">{nonfinite}</span>' if nonfinite else "0",
        ])  # fmt: skip
    losses = [f"<li>{_esc(e['kernel_loss'])}</li>" for e in report["engines"] if e.get("kernel_loss")]
    return (
        "<h2>Accuracy against the PyTorch reference</h2><p>Exact top-1 agree: the model's own, under the exact ONNX "
        "semantics of its graph (ONNX Runtime, graph optimizations off), whatever the CPU's INT8 instructions.</p>"
        + _table(header, rows, text_columns=2)
        + (f'<p class="fail">The CPU\'s kernels, not the model, lose accuracy:</p><ul>{"".join(losses)}</ul>' if losses else "")
    )


def _latency_section(report: dict[str, Any]) -> str:
    header = ["engine", "batch", "calls", "p50", "p90", "p95", "p99", "mean", "std", "min", "max", "images/s"]
    rows = []
    for entry in _timed_entries(report):
        for row in sorted(entry["latency"], key=lambda r: r["batch_size"]):
            rows.append(
                [_esc(entry["name"]), str(row["batch_size"]), _esc(row.get("iterations", ""))]
                + [
                    num(row.get(k), ".3f")
                    for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms")
                ]
                + [num(row.get("throughput_ips"), ".1f")]
            )
    if not rows:
        return "<h2>Latency</h2><p>No latency was measured.</p>"
    return "<h2>Latency (ms per call)</h2>" + _table(header, rows)


def _plots_section(report: dict[str, Any]) -> str:
    figures = list(plot_figures(report))
    missing = [e["name"] for e in _timed_entries(report) if e not in distribution_entries(report)]
    note = (
        f"<p>No per-call samples in this report for {_esc(', '.join(missing))} (written before samples were kept): "
        "no distribution plot.</p>"
        if missing
        else ""
    )
    return "<h2>Plots</h2>" + note + "".join(figures)


def _gates_section(gates: dict[str, Any] | None) -> str:
    if not gates:
        return ""
    from ..gates.render import describe, unmatched_text

    failed = sum(not r["passed"] for r in gates["results"]) + len(gates["unmatched_tables"])
    status = '<span class="pass">all gates pass</span>' if not failed else f'<span class="fail">{failed} gate(s) fail</span>'
    warnings = "".join(f'<p class="warn">{_esc(w)}</p>' for w in gates["warnings"])
    rows = [
        [
            '<span class="pass">PASS</span>' if r["passed"] else '<span class="fail">FAIL</span>',
            _esc(r["engine"]),
            f"<code>{_esc(r['gate'])}</code>",
            _esc(describe(r)),
        ]
        for r in gates["results"]
    ]
    rows += [
        ['<span class="fail">FAIL</span>', "", "", _esc(unmatched_text(p, gates["engines"]))] for p in gates["unmatched_tables"]
    ]
    baseline = f", baseline <code>{_esc(gates['baseline'])}</code>" if gates.get("baseline") else ""
    return f"<h2>Gates</h2><p>{status}{baseline}</p>{warnings}" + _table(["", "engine", "gate", "result"], rows, text_columns=4)


def _mixed_precision_section(report: dict[str, Any]) -> str:
    rows = [e for e in report["engines"] if (e.get("quantization") or {}).get("mixed_precision") and not e.get("error")]
    if not rows:
        return ""
    parts = ["<h2>Mixed precision (accuracy target)</h2>"]
    plots = _Plots()
    for engine in rows:
        search = engine["quantization"]["mixed_precision"]
        selection, on_val = search["selection"], search.get("on_val")
        status = (
            '<span class="pass">target met</span>' if search["met"] else '<span class="fail">target missed: best effort</span>'
        )
        facts = [
            ["target", _esc(f"{search['target']['description']}, at most {search['target']['max_excluded']} nodes in "
                            f"higher precision ({search['high_precision']})")],
            ["chosen on", _esc(f"{selection['samples']} images, {selection['origin']} ({selection['source']}), disjoint "
                               "from --val-data")],
            ["in higher precision", _esc(", ".join(search["excluded"]) or "none")],
        ]  # fmt: skip
        if on_val:
            verdict = '<span class="pass">met</span>' if on_val["met"] else '<span class="fail">missed</span>'
            facts.append(["on --val-data", f"{pct(on_val['top1_agreement'])} top-1 agreement: {verdict}"])
        facts += [
            [
                _esc(f"latency cost, batch {c['batch_size']}"),
                _esc(f"{c['before_p50_ms']:.3f} -> {c['after_p50_ms']:.3f} ms p50 on {c['engine']} ({c['cost_ms']:+.3f} ms)"),
            ]
            for c in search.get("latency_cost") or []
        ]
        steps = [
            [str(i), _esc(s["phase"]), str(len(s["excluded"])), pct(s["top1_agreement"]),
             num(s.get("top1_drop_points"), "+.2f"), '<span class="pass">met</span>' if s["met"] else "missed"]
            for i, s in enumerate(search["steps"], 1)
        ]  # fmt: skip
        parts.append(f"<h3>{_esc(engine['name'])}: {status}</h3>" + _table(["", ""], facts, text_columns=2))
        parts.append(
            _table(["step", "phase", "nodes in higher precision", "top-1 agreement", "top-1 drop (pts)", "target"], steps, 2)
        )
        if search.get("sensitivity"):
            draw, size = _draw_sensitivity(search["sensitivity"], set(search["excluded"]))
            caption = f"{engine['name']}: the most sensitive quantized nodes (SQNR each adds on the selection images)"
            parts.append(plots.render("layer-sensitivity", caption, draw, size, engine=engine["name"]))
    return "".join(parts)


def _draw_serving(models: list[dict[str, Any]]):
    """Throughput and p99 latency against concurrency, one line per served model."""

    def draw(fig) -> None:
        left, right = fig.subplots(1, 2)
        for i, model in enumerate(models):
            levels = sorted(model["levels"], key=lambda r: r["concurrency"])
            x = [r["concurrency"] for r in levels]
            style = {"color": COLORS[i % len(COLORS)], "marker": "o"}
            left.plot(x, [r.get("throughput_ips") or math.nan for r in levels], label=model["name"], **style)
            right.plot(x, [r.get("p99_ms") or math.nan for r in levels], label=model["name"], **style)
        for ax, label in ((left, "images / s"), (right, "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ticks = sorted({r["concurrency"] for m in models for r in m["levels"]})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrency (requests in flight, one image each)")
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
        right.legend(**LEGEND_OUTSIDE)

    return draw, (10.0, 3.4)


def _serving_section(serving: dict[str, Any] | None) -> str:
    """`resnet-deploy serve-check`: the served models' agreement, latency and throughput per concurrency, a plot."""
    if not serving:
        return ""
    server = serving["server"]
    header = ["model", "engine", "top-1 agree (served vs in process)", "max abs diff", "concurrency", "requests", "images/s",
              "p50", "p90", "p99", "queue us", "compute us", "mean batch", "batch sizes"]  # fmt: skip
    rows = []
    for model in serving["models"]:
        a = model["agreement"]
        verdict = f'<span class="{"pass" if a["passed"] else "fail"}">{pct(a["top1_agreement"])}</span>'
        for i, level in enumerate(model["levels"]):
            s = level["server"]
            first = (
                [_esc(model["name"]), _esc(model["engine"]), verdict, num(a.get("max_abs_diff"), ".3g")] if i == 0 else [""] * 4
            )
            sizes = ", ".join(f"{k}: {v}" for k, v in (s.get("batch_sizes") or {}).items())
            rows.append(first + [
                str(level["concurrency"]), _esc(level.get("requests", "")), num(level.get("throughput_ips"), ".1f"),
                num(level.get("p50_ms"), ".2f"), num(level.get("p90_ms"), ".2f"), num(level.get("p99_ms"), ".2f"),
                num(s.get("queue_us"), ".0f"), num(s.get("compute_us"), ".0f"), num(s.get("mean_batch"), ".2f"), _esc(sizes),
            ])  # fmt: skip
    failures = "".join(f'<p class="fail">{_esc(f)}</p>' for f in serving.get("failures", []))
    draw, size = _draw_serving(serving["models"])
    figure = _Plots().render("serving", "served throughput and p99 latency against concurrency", draw, size)
    return (
        f"<h2>Serving (Triton)</h2><p>tritonserver {_esc(server.get('version') or '?')} ({_esc(server['origin'])}), "
        f"repository <code>{_esc(serving.get('repository', ''))}</code>; gRPC, one image per request. Queue and compute "
        "times are Triton's statistics per request; mean batch is the images per execution the dynamic batcher formed.</p>"
        + failures
        + _table(header, rows, text_columns=2)
        + figure
    )


def _layers_section(layers: dict[str, Any] | None, heading: str = "h2") -> str:
    """`resnet-deploy layers` results (layers.json): the bar chart and the table, most sensitive first."""
    if not layers:
        return ""
    rows = layers["nodes"]
    draw, size = _draw_sensitivity(rows, set())
    figure = _Plots().render("layer-sensitivity", "per-node sensitivity, most sensitive first", draw, size)
    header = ["node", "module", "op", "SQNR (dB)", "agreement cost (pts)", "agreement with it unquantized"]
    cells = [
        [_esc(r["node"]), _esc(r.get("module") or ""), _esc(r["op_type"]), num(r.get("sqnr_db"), ".2f"),
         num(r.get("top1_agreement_drop_points"), "+.2f"), pct(r.get("top1_agreement_unquantized"))]
        for r in rows
    ]  # fmt: skip
    full = layers["fully_quantized"]
    return (
        f"<{heading}>Per-layer INT8 sensitivity: {_esc(layers['model']['arch'])} ({_esc(layers['target'])} target)"
        f"</{heading}><p>Fully quantized: {pct(full['top1_agreement'])} top-1 agreement with the FP32 model on "
        f"{_esc(layers['selection']['samples'])} images ({_esc(layers['selection']['origin'])}). Agreement cost: "
        "the points of top-1 agreement the model gains when only that node is left unquantized.</p>"
        + figure
        + _table(header, cells, text_columns=3)
    )


def render_layers_html(layers: dict[str, Any]) -> str:
    """The page `resnet-deploy layers` writes beside layers.json: the table and the bar chart."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>resnet-deploy layers</title><style>{CSS}</style></head><body>{_layers_section(layers, 'h1')}</body></html>\n"
    )


def _environment_section(report: dict[str, Any]) -> str:
    host, versions = report.get("host", {}), report.get("versions", {})

    def shown(key: str, value: Any) -> str:
        if key == "isa" and isinstance(value, dict):  # the INT8 instruction sets and what they mean for U8S8
            saturates = " (no VNNI: U8S8 sums saturate at 16 bits)" if value.get("u8s8_saturates") else ""
            return f"{value.get('summary', '?')}; kind {value.get('kind', '?')}{saturates}"
        return str(value)

    rows = [[_esc("INT8 instruction sets" if k == "isa" else k), _esc(shown(k, v))] for k, v in host.items()]
    rows += [[_esc(k), _esc(v)] for k, v in versions.items() if v]
    return "<h2>Environment</h2>" + _table(["", ""], rows, text_columns=2)


def _notes_section(report: dict[str, Any]) -> str:
    items = [f'<li class="fail">{_esc(f)}</li>' for f in report.get("failures", [])]
    items += [f"<li>{_esc(n)}</li>" for n in report.get("notes", [])]
    return f"<h2>Notes</h2><ul>{''.join(items)}</ul>" if items else ""


def render_html(report: dict[str, Any], gates: dict[str, Any] | None = None, layers: dict[str, Any] | None = None) -> str:
    """The page for a report dict; `gates` (a GateReport dict) defaults to the report's own gate results;
    `layers` (a layers.json, `resnet-deploy layers`) adds the per-layer sensitivity chart and table."""
    gates = gates if gates is not None else report.get("gates")
    arch = _esc(report["model"].get("arch", "?"))
    checks = (
        '<span class="fail">build checks failed</span>'
        if report.get("failures")
        else '<span class="pass">build checks passed</span>'
    )
    body = "".join(
        [
            f"<h1>resnet-deploy report: {arch}</h1><p>{checks}</p>",
            _gates_section(gates),
            _model_section(report),
            _stages_section(report),
            _accuracy_section(report),
            _classes_section(report),
            _latency_section(report),
            _plots_section(report),
            _mixed_precision_section(report),
            _serving_section(report.get("serving")),
            _layers_section(layers),
            _environment_section(report),
            _notes_section(report),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>resnet-deploy report: {arch}</title><style>{CSS}</style></head>'
        f"<body>{body}</body></html>\n"
    )
