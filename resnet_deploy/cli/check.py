"""`gate`, `compare` and `report`: what a report.json says, checked, compared and rendered again."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from .options import common, gate_options, parse_gates
from .tables import render_gates

EPILOG_GATE = """\b
Example:
  resnet-deploy gate out/report.json --gates gates.toml --baseline main/report.json \\
      --junit gates.xml --summary gates.md --set 'onnxruntime-int8.min_top1_agreement=0.995'
\b
Exit codes: 0 every gate passes, 1 a gate fails (a missing metric or a table matching no engine fails too),
2 bad input (unreadable report, bad gates file).
"""


@click.command(epilog=EPILOG_GATE)
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path))
@gate_options
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Also write the report as HTML with the gate results.")
@common
def gate(progress, report_path: Path, gates: Path | None, overrides, baseline, junit, summary, html_out) -> int:
    """Check a report.json against accuracy and latency thresholds: a line per gate, exit 1 if any fails."""
    from ..files import write_text_atomic
    from ..gates import evaluate
    from ..reports.schema import read_report

    thresholds = parse_gates(gates, overrides, baseline)
    if thresholds is None:
        raise UserError("give the thresholds: --gates FILE and/or --set ENGINE.KEY=VALUE")
    report = read_report(report_path)
    old = read_report(baseline, "baseline") if baseline is not None else None
    result = evaluate(thresholds, report, old, report_label=str(report_path), baseline_label=baseline and str(baseline))
    render_gates(result.as_dict(), junit, summary)
    if html_out is not None:
        from ..reports.html import render_html

        write_text_atomic(html_out, render_html(report, result.as_dict()))
    return result.return_code


@click.command(epilog="\b\nExample:\n  resnet-deploy compare main/report.json out/report.json > compare.md")
@click.argument("old_path", metavar="OLD.json", type=click.Path(path_type=Path))
@click.argument("new_path", metavar="NEW.json", type=click.Path(path_type=Path))
@common
def compare(progress, old_path: Path, new_path: Path) -> int:
    """Accuracy and latency of two reports side by side, with deltas and % changes (Markdown on stdout)."""
    from ..reports.compare import compare_reports
    from ..reports.schema import read_report

    old, new = read_report(old_path, "OLD report"), read_report(new_path, "NEW report")
    click.echo(compare_reports(old, new, str(old_path), str(new_path)), nl=False)
    return 0


@click.command(
    epilog="\b\nExample:\n  resnet-deploy report out/report.json --html report.html\n"
    "  resnet-deploy report out/report.json --html report.html --layers layers/layers.json"
)
@click.argument("report_path", metavar="REPORT.json", type=click.Path(path_type=Path))
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="Write the self-contained HTML page here.")
@click.option("--markdown", "markdown_out", type=click.Path(path_type=Path), help="Write the Markdown report here.")
@click.option(
    "--layers", "layers_path", type=click.Path(path_type=Path), help="layers.json of `resnet-deploy layers`: adds its chart."
)
@common
def report(progress, report_path: Path, html_out: Path | None, markdown_out: Path | None, layers_path: Path | None) -> int:
    """Render report.html (or report.md) again from a report.json, e.g. one downloaded from CI."""
    from ..files import write_text_atomic
    from ..reports.html import render_html
    from ..reports.markdown import to_markdown
    from ..reports.schema import read_layers, read_report

    if html_out is None and markdown_out is None:
        raise UserError("give --html OUT.html and/or --markdown OUT.md")
    if layers_path is not None and html_out is None:
        raise UserError("--layers adds a chart to the HTML page; give --html OUT.html too")
    data = read_report(report_path)
    layers = read_layers(layers_path) if layers_path is not None else None
    if html_out is not None:
        write_text_atomic(html_out, render_html(data, layers=layers))
        click.echo(f"wrote {html_out}")
    if markdown_out is not None:
        write_text_atomic(markdown_out, to_markdown(data))
        click.echo(f"wrote {markdown_out}")
    return 0
