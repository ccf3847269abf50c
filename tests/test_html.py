"""report.html from a real build: self-contained, its plots, no global matplotlib state, and a real browser."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.reports.html import render_html

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def report(built) -> dict:
    code, output, out = built
    assert code == 0, output
    return json.loads((out / "report.json").read_text())


def expected_plots(report: dict) -> int:
    """A latency distribution per timed entry with samples, plus throughput vs batch size and accuracy vs speed."""
    timed = [e for e in [report["reference"], *report["engines"]] if e["latency"]]
    return sum(any(row.get("samples_ms") for row in e["latency"]) for e in timed) + 2


def test_report_keeps_every_latency_sample(report):
    for entry in [report["reference"], *report["engines"]]:
        for row in entry["latency"]:
            samples = row["samples_ms"]
            assert len(samples) == row["iterations"] == 10 and row["min_ms"] == pytest.approx(min(samples), abs=1e-4)
            p50, p99 = np.percentile(samples, [50, 99])  # the stored samples are the ones the percentiles came from
            assert p50 == pytest.approx(row["p50_ms"], abs=1e-3) and p99 == pytest.approx(row["p99_ms"], abs=1e-3)


def test_build_writes_a_self_contained_page(built, report):
    _, _, out = built
    page = (out / "report.html").read_text()
    assert page.count("<img ") == page.count('src="data:image/png;base64,') == expected_plots(report) == 5
    for plot in ("latency-distribution", "throughput", "accuracy-vs-speed"):
        assert f'data-plot="{plot}"' in page
    for text in ("<h2>Model</h2>", "<h2>Stages</h2>", "Accuracy against the PyTorch reference", "Latency (ms per call)",
                 "onnxruntime-fp32", "openvino-fp32", "pytorch-fp32 (reference)", "resnet18"):  # fmt: skip
        assert text in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<h2>Gates</h2>" not in page  # no gates were given


def test_rendering_leaves_matplotlib_state_alone(report):
    import matplotlib

    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    render_html(report)
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_old_reports_without_samples_still_render(report):
    old = copy.deepcopy(report)
    for entry in [old["reference"], *old["engines"]]:
        for row in entry["latency"]:
            del row["samples_ms"]
    page = render_html(old)
    assert page.count("<img ") == expected_plots(old) == 2
    assert "No per-call samples in this report for pytorch-fp32, onnxruntime-fp32, openvino-fp32" in page


def test_report_command_renders_html_and_markdown_from_json(built, tmp_path):
    _, _, out = built
    result = CliRunner().invoke(cli, ["report", str(out / "report.json"), "--html", str(tmp_path / "r.html"),
                                      "--markdown", str(tmp_path / "r.md")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.md").read_text() == (out / "report.md").read_text()
    assert (tmp_path / "r.html").read_text().count("<img ") == 5
    result = CliRunner().invoke(cli, ["report", str(out / "report.json")])
    assert result.exit_code == 2 and "give --html" in result.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def test_page_loads_in_headless_chromium_and_shows_its_plots(built, report, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    # the page as `resnet-deploy gate --html` writes it: with gate results
    _, _, out = built
    gates = tmp_path / "gates.toml"
    gates.write_text('["onnxruntime-fp32"]\nmin_top1_agreement = 0.99\n["*-int8"]\nmin_cosine = 0.99\n')
    page_path = tmp_path / "report.html"
    result = CliRunner().invoke(cli, ["gate", str(out / "report.json"), "--gates", str(gates), "--html", str(page_path)])
    assert result.exit_code == 1, result.output  # the *-int8 table matches no engine
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.on("request", lambda req: requests.append(req.url))
            response = page.goto(page_path.as_uri(), wait_until="load")
            assert response is not None and response.ok
            images = page.evaluate(
                "() => Array.from(document.images).map(i => ({plot: i.dataset.plot, complete: i.complete, "
                "width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
            )
            title = page.title()
            gate_rows = page.locator("h2:has-text('Gates') + p + table tbody tr").count()
        finally:
            browser.close()
    assert errors == []
    assert [url for url in requests if not url.startswith("data:")] == [page_path.as_uri()]  # nothing fetched
    assert len(images) == expected_plots(report) == 5  # a distribution each for PyTorch, ONNX Runtime and OpenVINO
    plots = sorted(i["plot"] for i in images)
    assert plots == ["accuracy-vs-speed", *["latency-distribution"] * 3, "throughput"]
    for image in images:
        assert image["complete"] and image["width"] > 100 and image["height"] > 100 and image["shown"] > 0, image
    assert title == "resnet-deploy report: resnet18"
    assert gate_rows == 2  # one passing gate, one table that matches no engine
