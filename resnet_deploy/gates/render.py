"""A `GateReport` as text: a line per gate (stdout), JUnit XML (CI test views), Markdown (CI job summary).

Renderers work from `GateReport.as_dict()`, so a report.json that carries gate results renders the same.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from .spec import table_label

_PASS_OP = {"max": "<=", "min": ">="}
_FAIL_OP = {"max": ">", "min": "<"}


def format_pair(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with just enough digits that unequal numbers never print the same."""
    for digits in range(4, 18):
        a, b = f"{value:.{digits}g}", f"{threshold:.{digits}g}"
        if a != b or value == threshold:
            return a, b
    return repr(value), repr(threshold)


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def describe(result: dict[str, Any]) -> str:
    """'0.4123 ms > 0.4 ms' or 'missing (...): why', the body of every rendering of one result."""
    unit, bound = result["unit"], result["bound"]
    if result["value"] is None:
        threshold = _with_unit(f"{result['threshold']:.6g}", unit)
        return f"missing, needs {_PASS_OP[bound]} {threshold}: {result['reason']}"
    value, threshold = format_pair(result["value"], result["threshold"])
    op = _PASS_OP[bound] if result["passed"] else _FAIL_OP[bound]
    text = f"{_with_unit(value, unit)} {op} {_with_unit(threshold, unit)}"
    return f"{text} ({result['detail']})" if result.get("detail") else text


def unmatched_text(pattern: str, engines: list[str]) -> str:
    return (
        f"no engine in the report matches table {table_label(pattern)} (engines: {', '.join(engines) or 'none'}); "
        "build that engine or remove the table"
    )


def lines(gates: dict[str, Any]) -> list[str]:
    """One line per gate, then warnings and a total."""
    results = gates["results"]
    width_engine = max((len(r["engine"]) for r in results), default=0)
    width_gate = max((len(r["gate"]) for r in results), default=0)
    out = [
        f"{'PASS' if r['passed'] else 'FAIL'}  {r['engine']:<{width_engine}}  {r['gate']:<{width_gate}}  {describe(r)}"
        for r in results
    ]
    out += [f"FAIL  {unmatched_text(p, gates['engines'])}" for p in gates["unmatched_tables"]]
    out += [f"WARNING: {w}" for w in gates["warnings"]]
    if gates["ungated_engines"]:
        out.append(f"note: no gate applies to {', '.join(gates['ungated_engines'])}")
    out.append(_total(gates))
    return out


def _total(gates: dict[str, Any]) -> str:
    failed = sum(not r["passed"] for r in gates["results"]) + len(gates["unmatched_tables"])
    passed = sum(r["passed"] for r in gates["results"])
    return f"gates: {passed} passed, {failed} failed" + ("" if failed else " - all gates pass")


# -------------------------------------------------------------------------------------------- JUnit

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    return _XML_INVALID.sub("?", text)


def junit(gates: dict[str, Any]) -> str:
    """JUnit XML: a testsuite per engine, a testcase per gate; failures carry value and threshold."""
    results = gates["results"]
    failures = sum(not r["passed"] for r in results) + len(gates["unmatched_tables"])
    root = ET.Element(
        "testsuites",
        name="resnet-deploy gates",
        tests=str(len(results) + len(gates["unmatched_tables"])),
        failures=str(failures),
        errors="0",
        time="0",
    )
    properties = [("report", gates["report"]), ("baseline", gates["baseline"] or "")]
    properties += [(f"warning{i + 1}", w) for i, w in enumerate(gates["warnings"])]
    engines = list(dict.fromkeys(r["engine"] for r in results))
    for engine in engines:
        rows = [r for r in results if r["engine"] == engine]
        suite = _suite(root, engine, len(rows), sum(not r["passed"] for r in rows), properties)
        for r in rows:
            case = ET.SubElement(
                suite, "testcase", classname=_xml(f"resnet-deploy.gates.{engine}"), name=_xml(r["gate"]), time="0"
            )
            text = describe(r)
            body = f"engine: {engine}\ngate: {r['gate']} (from table {table_label(r['table'])})\nvalue: {r['value']}\n"
            body += f"threshold: {_PASS_OP[r['bound']]} {r['threshold']}{(' ' + r['unit']) if r['unit'] else ''}\n"
            if r.get("reason"):
                body += f"reason: {r['reason']}\n"
            if r.get("detail"):
                body += f"detail: {r['detail']}\n"
            if not r["passed"]:
                failure = ET.SubElement(case, "failure", message=_xml(f"{r['gate']}: {text}"), type="GateFailed")
                failure.text = _xml(body)
            else:
                ET.SubElement(case, "system-out").text = _xml(body)
    if gates["unmatched_tables"]:
        suite = _suite(root, "unmatched tables", len(gates["unmatched_tables"]), len(gates["unmatched_tables"]), properties)
        for pattern in gates["unmatched_tables"]:
            case = ET.SubElement(
                suite, "testcase", classname="resnet-deploy.gates.tables", name=_xml(table_label(pattern)), time="0"
            )
            message = unmatched_text(pattern, gates["engines"])
            ET.SubElement(case, "failure", message=_xml(message), type="NoMatchingEngine").text = _xml(message)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _suite(root: ET.Element, name: str, tests: int, failures: int, properties: list[tuple[str, str]]) -> ET.Element:
    suite = ET.SubElement(
        root, "testsuite", name=_xml(f"gates {name}"), tests=str(tests), failures=str(failures), errors="0", skipped="0", time="0"
    )
    props = ET.SubElement(suite, "properties")
    for key, value in properties:
        ET.SubElement(props, "property", name=key, value=_xml(value))
    return suite


# ----------------------------------------------------------------------------------------- Markdown


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(gates: dict[str, Any]) -> str:
    """A Markdown summary for a CI job page (e.g. $GITHUB_STEP_SUMMARY)."""
    results = gates["results"]
    failed = sum(not r["passed"] for r in results) + len(gates["unmatched_tables"])
    total = len(results) + len(gates["unmatched_tables"])
    head = f"✅ all {total} gates pass" if not failed else f"❌ {failed} of {total} gates fail"
    out = [f"## resnet-deploy gates: {head}", "", f"report: `{_cell(gates['report'])}`"]
    if gates["baseline"]:
        out[-1] += f" · baseline: `{_cell(gates['baseline'])}`"
    out.append("")
    out += [f"> ⚠️ **{_cell(w)}**" for w in gates["warnings"]]
    if gates["warnings"]:
        out.append("")
    out += ["| | engine | gate | value | threshold | note |", "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r["passed"]):  # failures first, otherwise in report order
        if r["value"] is None:
            value, threshold = "missing", f"{r['threshold']:.6g}"
        else:
            value, threshold = format_pair(r["value"], r["threshold"])
            value = _with_unit(value, r["unit"])
        note = r.get("reason") or r.get("detail") or ""
        out.append(
            f"| {'✅' if r['passed'] else '❌'} | {_cell(r['engine'])} | `{_cell(r['gate'])}` | {value} | "
            f"{_PASS_OP[r['bound']]} {_with_unit(threshold, r['unit'])} | {_cell(note)} |"
        )
    for pattern in gates["unmatched_tables"]:
        out.append(f"| ❌ | none | `{_cell(table_label(pattern))}` | | | {_cell(unmatched_text(pattern, gates['engines']))} |")
    if gates["ungated_engines"]:
        out += ["", f"No gate applies to: {_cell(', '.join(gates['ungated_engines']))}."]
    return "\n".join(out) + "\n"
