"""`resnet-deploy compare` on a real report and edited copies of it."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.reports.compare import compare_reports


@pytest.fixture(scope="module")
def report(built) -> dict:
    code, output, out = built
    assert code == 0, output
    return json.loads((out / "report.json").read_text())


def table_row(markdown: str, *cells: str) -> list[str]:
    """The cells of the first table row that starts with `cells`."""
    prefix = "| " + " | ".join(cells) + " |"
    row = next(line for line in markdown.splitlines() if line.startswith(prefix))
    return [c.strip() for c in row.strip("|").split(" | ")]


def test_a_report_against_itself_has_no_change(report):
    text = compare_reports(report, report)
    assert text.startswith("# resnet-deploy compare") and "⚠️" not in text and "only in" not in text
    row = table_row(text, "onnxruntime-fp32", "top-1 agreement")
    assert row[2:] == ["100.00%", "100.00%", "+0.00 pts", "+0.0%"]
    for name in ("pytorch-fp32", "onnxruntime-fp32"):
        for batch in ("1", "4"):
            row = table_row(text, name, batch)
            assert row[4] == row[7] == row[10] == "+0.0%" and row[2] == row[3]


def test_deltas_and_percent_changes(report, tmp_path):
    new = copy.deepcopy(report)
    engine = new["engines"][0]
    engine["accuracy"]["top1_agreement"] = 0.99
    row1 = next(r for r in engine["latency"] if r["batch_size"] == 1)
    row1["p50_ms"] *= 2
    row1["throughput_ips"] /= 4
    new["host"]["threads"] = 64
    new["engines"].append({**copy.deepcopy(engine), "name": "onnxruntime-int8"})
    old_path, new_path = tmp_path / "old.json", tmp_path / "new.json"
    old_path.write_text(json.dumps(report))
    new_path.write_text(json.dumps(new))
    result = CliRunner().invoke(cli, ["compare", str(old_path), str(new_path)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert table_row(text, "onnxruntime-fp32", "top-1 agreement")[2:] == ["100.00%", "99.00%", "-1.00 pts", "-1.0%"]
    latency = table_row(text, "onnxruntime-fp32", "1")
    assert latency[4] == "+100.0%" and latency[10] == "-75.0%"
    assert table_row(text, "onnxruntime-fp32", "4")[4] == "+0.0%"
    assert "- only in NEW: onnxruntime-int8" in text
    assert f"⚠️ OLD is from another machine or setting (threads {report['host']['threads']} vs 64)" in text


def test_compare_rejects_a_file_that_is_not_a_report(built, tmp_path):
    _, _, out = built
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    result = CliRunner().invoke(cli, ["compare", str(out / "report.json"), str(bad)])
    assert result.exit_code == 2 and "NEW report" in result.output and "must be an object" in result.output


def test_a_reader_that_goes_away_is_not_an_error(built):
    """`resnet-deploy compare ... | head -1`: stdout's pipe closes early; exit 141 (SIGPIPE's code), no error line."""
    import os
    import subprocess

    from .conftest import console_script

    _, _, out = built
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE, like after `head` exits
    try:
        process = subprocess.run(
            [str(console_script()), "compare", str(out / "report.json"), str(out / "report.json")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert process.returncode == 141, process.stderr
    assert "error" not in process.stderr.lower() and "Traceback" not in process.stderr
