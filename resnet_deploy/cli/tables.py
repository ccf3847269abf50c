"""What the commands print: rich tables and result lines on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def render_gates(gates: dict[str, Any], junit: Path | None, summary: Path | None) -> None:
    from ..files import write_text_atomic
    from ..gates import render

    for line in render.lines(gates):
        click.echo(line)
    if junit is not None:
        write_text_atomic(junit, render.junit(gates))
    if summary is not None:
        write_text_atomic(summary, render.markdown(gates))


def print_search(search: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title=f"target: {search['target']['description']}")
    for title in ("step", "phase", "nodes in higher precision", "top-1 agree", "drop (pts)", "target"):
        table.add_column(title, justify="right" if title in ("step", "top-1 agree", "drop (pts)") else "left")
    for i, step in enumerate(search["steps"], 1):
        drop = step.get("top1_drop_points")
        table.add_row(
            str(i), step["phase"], ", ".join(step["excluded"]) or "-", f"{step['top1_agreement'] * 100:.2f}%",
            "n/a" if drop is None else f"{drop:+.2f}", "met" if step["met"] else "missed",
        )  # fmt: skip
    console().print(table)
    on_val = search.get("on_val")
    if on_val:
        click.echo(
            f"on --val-data: {on_val['top1_agreement'] * 100:.2f}% top-1 agreement: {'met' if on_val['met'] else 'MISSED'}"
        )
    for cost in search.get("latency_cost") or []:
        click.echo(
            f"latency cost ({cost['engine']}, batch {cost['batch_size']}): {cost['before_p50_ms']:.3f} -> "
            f"{cost['after_p50_ms']:.3f} ms p50 ({cost['cost_ms']:+.3f} ms)"
        )


def print_layers(data: dict[str, Any]) -> None:
    from rich.table import Table

    full = data["fully_quantized"]
    title = (
        f"{data['target']} INT8, fully quantized: {full['top1_agreement'] * 100:.2f}% top-1 agreement on "
        f"{data['selection']['samples']} images ({data['selection']['origin']})"
    )
    table = Table(show_edge=False, pad_edge=False, title=title)
    for column in ("rank", "node", "module", "op", "SQNR dB", "agreement cost (pts)"):
        table.add_column(column, justify="right" if column in ("rank", "SQNR dB", "agreement cost (pts)") else "left")
    for rank, row in enumerate(data["nodes"], 1):
        sqnr, cost = row.get("sqnr_db"), row.get("top1_agreement_drop_points")
        table.add_row(
            str(rank), row["node"], row.get("module") or "", row["op_type"],
            "n/a" if sqnr is None else f"{sqnr:.2f}", "n/a" if cost is None else f"{cost:+.2f}",
        )  # fmt: skip
    console().print(table)


def console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # a log file or a pipe: do not squeeze tables


def print_repository(exported) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, title=f"Triton model repository {exported.path}")
    for column in ("model", "engine", "served by", "max batch", "input"):
        table.add_column(column)
    for m in exported.models:
        served_by = f"python: {m.backend.split('-')[0]}" if exported.python_backend else m.backend
        table.add_row(m.name, m.engine, served_by, str(m.max_batch_size), f"{m.input.name} {list(m.input.dims)}")
    console().print(table)
    for note in exported.notes:
        click.echo(f"note: {note}", err=True)


def print_serving(section: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        show_edge=False, pad_edge=False, title=f"Triton {section['server'].get('version') or ''} ({section['server']['origin']})"
    )
    for column in ("model", "agreement", "conc.", "img/s", "p50 ms", "p99 ms", "queue us", "compute us", "mean batch"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in section["models"]:
        a = model["agreement"]
        agreement = f"{a['top1_agreement'] * 100:.2f}% ({'ok' if a['passed'] else 'FAILED'})"
        for i, level in enumerate(model["levels"]):
            server = level["server"]
            table.add_row(
                model["name"] if i == 0 else "", agreement if i == 0 else "", str(level["concurrency"]),
                _fmt(level["throughput_ips"], ".1f"), _fmt(level["p50_ms"], ".2f"), _fmt(level["p99_ms"], ".2f"),
                _fmt(server["queue_us"], ".0f"), _fmt(server["compute_us"], ".0f"), _fmt(server["mean_batch"], ".2f"),
            )  # fmt: skip
    console().print(table)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_summary(report: dict[str, Any]) -> None:
    """A short table on stdout: accuracy and latency per engine."""
    from rich.table import Table

    from ..engines.naming import int8_compute

    rows = [report["reference"], *report["engines"]] if report["reference"].get("latency") else report["engines"]
    batch_sizes = sorted({lat["batch_size"] for row in rows for lat in row.get("latency", [])})
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("engine")
    exact = any(row.get("reference_accuracy") for row in rows)  # the models' own accuracy (exact ONNX semantics)
    if any(row.get("accuracy") for row in rows):
        for title in ("top-1 agree", *(["exact agree"] if exact else []), "max abs diff", "top-1", "drop (pts)"):
            table.add_column(title, justify="right")
    for b in batch_sizes:
        table.add_column(f"b{b} p50 ms", justify="right")
        table.add_column(f"b{b} img/s", justify="right")
    has_accuracy = any(row.get("accuracy") for row in rows)
    for row in rows:
        search = (row.get("quantization") or {}).get("mixed_precision")
        cells = [row["name"] + ("" if not search or search["met"] else " (best effort: target missed)")]
        cells[0] += " (simulated INT8)" if int8_compute(row) else ""
        acc = row.get("accuracy")
        if has_accuracy:
            reference = row.get("reference_accuracy")
            exact_cell = [] if not exact else ["" if reference is None else f"{reference['top1_agreement'] * 100:.2f}%"]
            if row.get("error"):
                cells += ["not built", *exact_cell, "", "", ""]
            elif acc is None:
                top1 = report["reference"].get("top1")
                cells += ["reference", *exact_cell, "", "n/a" if top1 is None else f"{top1 * 100:.2f}%", ""]
            else:
                cells += [
                    f"{acc['top1_agreement'] * 100:.2f}%" + (" !" if row.get("kernel_loss") else ""),
                    *exact_cell,
                    "NaN/Inf" if acc.get("max_abs_diff") is None else f"{acc['max_abs_diff']:.3g}",
                    "n/a" if acc.get("top1") is None else f"{acc['top1'] * 100:.2f}%",
                    "n/a" if acc.get("top1_drop_points") is None else f"{acc['top1_drop_points']:+.2f}",
                ]
        for b in batch_sizes:
            lat = next((x for x in row.get("latency", []) if x["batch_size"] == b), None)
            cells += ["", ""] if lat is None else [f"{lat['p50_ms']:.2f}", f"{lat['throughput_ips']:.1f}"]
        table.add_row(*cells)
    console().print(table)
    for row in rows:
        if row.get("kernel_loss"):
            click.echo(f"! kernel loss: {row['kernel_loss']}")
