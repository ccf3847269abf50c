"""A build's report files: report.json, report.md and report.html, each written atomically into a folder."""

from __future__ import annotations

from pathlib import Path

from ..files import write_json_atomic, write_text_atomic
from .html import render_html
from .markdown import to_markdown
from .report import Report


def write_report(report: Report, folder: Path) -> None:
    data = report.as_dict()
    write_json_atomic(Path(folder) / "report.json", data)
    write_text_atomic(Path(folder) / "report.md", to_markdown(data))
    write_text_atomic(Path(folder) / "report.html", render_html(data))
