"""Gates on real reports of the digits model: thresholds at, just above and just below the measured values,
missing metrics, baseline regressions, JUnit/Markdown output, and every kind of bad gates file (exit 2)."""

from __future__ import annotations

import copy
import json
import math
import re
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from resnet_deploy.cli import cli
from resnet_deploy.errors import UserError
from resnet_deploy.gates import SPECS, evaluate, parse_gates
from resnet_deploy.gates.render import junit, lines, markdown
from resnet_deploy.gates.spec import SPEC_BY_KEY

from .conftest import build_args

ENGINE = "onnxruntime-fp32"


@pytest.fixture(scope="module")
def report_path(built):
    code, output, out = built
    assert code == 0, output
    return out / "report.json"


@pytest.fixture(scope="module")
def report(report_path) -> dict:
    return json.loads(report_path.read_text())


@pytest.fixture
def one_engine(report) -> dict:
    """The report with only ENGINE's row (the build also ran OpenVINO's)."""
    return {**report, "engines": [e for e in report["engines"] if e["name"] == ENGINE]}


def measured(report: dict) -> dict[tuple[str, int | None], float]:
    """Every gate leaf's measured value in the real report, keyed (gate key, batch size)."""
    engine = next(e for e in report["engines"] if e["name"] == ENGINE)
    acc = engine["accuracy"]
    values = {
        ("max_top1_drop_points", None): acc["top1_drop_points"],
        ("min_top1_agreement", None): acc["top1_agreement"],
        ("min_cosine", None): acc["cosine_min"],
        ("max_abs_diff", None): acc["max_abs_diff"],
    }
    for row in engine["latency"]:
        values[("max_p99_ms", row["batch_size"])] = row["p99_ms"]
        values[("min_throughput_ips", row["batch_size"])] = row["throughput_ips"]
    return values


def toml_for(leaves: dict[tuple[str, int | None], float], table: str = ENGINE) -> str:
    """A gates file with one table; floats written with repr so the threshold is exactly the given number."""
    out = [f'["{table}"]']
    per_batch: dict[str, list[str]] = {}
    for (key, batch), value in leaves.items():
        if batch is None:
            out.append(f"{key} = {value!r}")
        else:
            per_batch.setdefault(key, []).append(f"{batch} = {value!r}")
    out += [f"{key} = {{ {', '.join(items)} }}" for key, items in per_batch.items()]
    return "\n".join(out) + "\n"


def toward(value: float, bound: str, passing: bool) -> float:
    """The nearest float on the passing (or failing) side of `value` for a max/min gate."""
    up = (bound == "max") == passing
    return math.nextafter(value, math.inf if up else -math.inf)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


# ----------------------------------------------------------------------------- pass / fail on real values


REFERENCE_KEYS = {s.key for s in SPECS if "_reference_" in s.key}  # the model's exact accuracy: FP16/INT8 rows only


def test_every_gate_passes_at_and_just_beyond_the_measured_value(report, tmp_path):
    values = measured(report)
    assert {key for key, _ in values} == {s.key for s in SPECS} - {"max_latency_regression_pct"} - REFERENCE_KEYS
    for name, threshold_of in {"at": lambda k, v: v, "beyond": lambda k, v: toward(v, SPEC_BY_KEY[k].bound, True)}.items():
        leaves = {(k, b): threshold_of(k, v) for (k, b), v in values.items()}
        leaves = {leaf: t for leaf, t in leaves.items() if SPEC_BY_KEY[leaf[0]].in_range(t)}
        result = evaluate(parse_gates(toml_for(leaves)), report)
        assert result.return_code == 0, (name, lines(result.as_dict()))
        assert len(result.results) == len(leaves) and all(r.passed for r in result.results)


@pytest.mark.parametrize("key", ["max_top1_drop_points", "min_top1_agreement", "min_cosine", "max_abs_diff", "max_p99_ms",
                                 "min_throughput_ips"])  # fmt: skip
def test_each_gate_fails_just_beyond_the_measured_value(report, key):
    """The nearest float on the failing side fails, and only that gate fails."""
    values = measured(report)
    spec = SPEC_BY_KEY[key]
    leaves = {leaf: v for leaf, v in values.items() if leaf[0] == key}
    failing = {leaf: toward(v, spec.bound, False) for leaf, v in leaves.items()}
    if not all(spec.in_range(t) for t in failing.values()):
        # The fp32 engine agrees on every sample (1.0): no valid threshold lies above it. Use the engine's
        # real report with one fewer agreeing sample instead.
        assert key == "min_top1_agreement" and values[(key, None)] == 1.0
        report = copy.deepcopy(report)
        acc = report["engines"][0]["accuracy"]
        acc["top1_agreement"] = (acc["samples"] - 1) / acc["samples"]
        failing = {(key, None): math.nextafter(acc["top1_agreement"], 2.0)}
    result = evaluate(parse_gates(toml_for(failing)), report)
    assert result.return_code == 1
    assert len(result.results) == len(failing) and not any(r.passed for r in result.results)
    for r in result.results:
        assert r.value is not None and r.reason is None  # a real number that misses the threshold


def test_gate_command_exit_codes_lines_junit_and_summary(report, report_path, tmp_path):
    values = measured(report)
    gates = tmp_path / "gates.toml"
    gates.write_text(toml_for({leaf: toward(v, SPEC_BY_KEY[leaf[0]].bound, True) for leaf, v in values.items()
                               if SPEC_BY_KEY[leaf[0]].in_range(toward(v, SPEC_BY_KEY[leaf[0]].bound, True))}))  # fmt: skip
    result = invoke("gate", str(report_path), "--gates", str(gates), "--junit", str(tmp_path / "ok.xml"))
    assert result.exit_code == 0, result.output
    gate_lines = [line for line in result.output.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert gate_lines and all(line.startswith("PASS") and ENGINE in line for line in gate_lines)
    assert result.output.splitlines()[-1].endswith("all gates pass")

    # the same file with p99 at batch 4 just below the measured value: exactly one failure
    p99 = values[("max_p99_ms", 4)]
    stricter = f"{ENGINE}.max_p99_ms.4={toward(p99, 'max', False)!r}"
    result = invoke("gate", str(report_path), "--gates", str(gates), "--set", stricter,
                    "--junit", str(tmp_path / "fail.xml"), "--summary", str(tmp_path / "fail.md"))  # fmt: skip
    assert result.exit_code == 1, result.output
    (failed,) = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    shown = re.search(r"max_p99_ms\[batch=4\]\s+(\S+) ms > (\S+) ms$", failed)
    assert shown, failed
    assert float(shown[1]) == pytest.approx(p99) and shown[1] != shown[2]  # enough digits to tell them apart

    root = ET.parse(tmp_path / "fail.xml").getroot()
    assert root.tag == "testsuites" and root.get("failures") == "1"
    cases = root.findall(".//testcase")
    assert len(cases) == int(root.get("tests")) == len(gate_lines)
    (failure,) = root.findall(".//testcase/failure")
    case = next(c for c in cases if c.find("failure") is not None)
    assert case.get("name") == "max_p99_ms[batch=4]" and case.get("classname").endswith(ENGINE)
    assert f"value: {p99!r}" in failure.text and "threshold: <= " in failure.text
    assert " > " in failure.get("message")
    ok = ET.parse(tmp_path / "ok.xml").getroot()
    assert ok.get("failures") == "0" and not ok.findall(".//failure")
    summary = (tmp_path / "fail.md").read_text()
    assert summary.startswith("## resnet-deploy gates: ❌ 1 of") and "`max_p99_ms[batch=4]`" in summary


# -------------------------------------------------------------------------------- missing metrics


def test_missing_metrics_fail_with_the_reason(report):
    unlabelled = copy.deepcopy(report)
    unlabelled["data"]["val"]["labels"] = False
    for key in ("top1", "top1_ref", "top1_drop_points"):
        unlabelled["engines"][0]["accuracy"][key] = None
    gates = parse_gates(f'["{ENGINE}"]\nmax_top1_drop_points = 0.5\nmax_p99_ms = {{ 64 = 10.0 }}\nmin_top1_agreement = 0.5\n')
    result = evaluate(gates, unlabelled)
    by_gate = {r.name: r for r in result.results}
    assert result.return_code == 1
    assert not by_gate["max_top1_drop_points"].passed and "no labels" in by_gate["max_top1_drop_points"].reason
    unmeasured = by_gate["max_p99_ms[batch=64]"]
    assert not unmeasured.passed and "batch size 64 (measured: 1, 4)" in unmeasured.reason
    assert by_gate["min_top1_agreement"].passed
    text = "\n".join(lines(result.as_dict()))
    assert "FAIL" in text and "missing, needs <= 0.5 pts: the validation data has no labels" in text

    broken = copy.deepcopy(report)
    broken["engines"][0]["error"] = "TensorRT is not installed"
    broken["engines"][0]["accuracy"] = None
    result = evaluate(parse_gates(f'["{ENGINE}"]\nmin_cosine = 0.9\n'), broken)
    (r,) = result.results
    assert not r.passed and "TensorRT is not installed" in r.reason


def test_tables_matching_no_engine_fail_and_ungated_engines_are_named(report, report_path):
    engines = tuple(e["name"] for e in report["engines"])
    result = evaluate(parse_gates('["*-int8"]\nmin_cosine = 0.9\n["tensorrt-fp16"]\nmin_cosine = 0.9\n'), report)
    assert result.return_code == 1 and result.unmatched == ("*-int8", "tensorrt-fp16") and result.ungated == engines
    out = invoke("gate", str(report_path), "--set", "*-int8.min_cosine=0.9", "--set", f"{ENGINE}.min_cosine=0.5")
    assert out.exit_code == 1
    assert f'no engine in the report matches table ["*-int8"] (engines: {", ".join(engines)})' in out.output
    assert f"PASS  {ENGINE}  min_cosine" in out.output


def test_exact_names_beat_globs_and_set_overrides_the_file(one_engine):
    report = one_engine
    gates = parse_gates('["*"]\nmax_abs_diff = 0.0\nmin_cosine = 0.5\n\n["onnxruntime-*"]\nmin_cosine = 0.6\n\n'
                        f'["{ENGINE}"]\nmax_abs_diff = 1.0\n')  # fmt: skip
    applied = {a.threshold.key: (a.threshold.value, a.pattern) for a in gates.for_engine(ENGINE)}
    assert applied == {"max_abs_diff": (1.0, ENGINE), "min_cosine": (0.6, "onnxruntime-*")}
    assert evaluate(gates, report).return_code == 0
    strict = gates.with_overrides([f"{ENGINE}.max_abs_diff=0", "*.min_throughput_ips.1=1e9"])
    result = evaluate(strict, report)
    assert {r.name for r in result.results if not r.passed} == {"max_abs_diff", "min_throughput_ips[batch=1]"}
    assert gates.with_overrides(["new-engine.max_p99_ms={ 1 = 5, 8 = 30 }"]).tables[-1].pattern == "new-engine"


# --------------------------------------------------------------------------------------- baseline


def scaled_baseline(report: dict, factors: dict[int, float]) -> dict:
    """A copy of the real report whose engine p50 at each batch size is the new p50 divided by `factor`."""
    baseline = copy.deepcopy(report)
    for row in baseline["engines"][0]["latency"]:
        row["p50_ms"] = row["p50_ms"] / factors[row["batch_size"]]
    return baseline


def test_latency_regression_against_a_baseline(report, report_path, tmp_path):
    baseline = scaled_baseline(report, {1: 1.25, 4: 0.8})  # new is 25% slower at batch 1, 20% faster at 4
    gates = parse_gates(f'["{ENGINE}"]\nmax_latency_regression_pct = 24.9\n')
    result = evaluate(gates, report, baseline)
    by_batch = {r.batch_size: r for r in result.results}
    assert by_batch[1].value == pytest.approx(25.0, abs=1e-9) and not by_batch[1].passed
    assert by_batch[4].value == pytest.approx(-20.0, abs=1e-9) and by_batch[4].passed
    assert result.warnings == ()  # same machine, same versions
    assert evaluate(parse_gates(f'["{ENGINE}"]\nmax_latency_regression_pct = 25.1\n'), report, baseline).return_code == 0

    base_path = tmp_path / "baseline.json"
    baseline["host"]["cpu"] = "Some Other CPU @ 2.0GHz"
    baseline["host"]["threads"] = 16
    base_path.write_text(json.dumps(baseline))
    out = invoke("gate", str(report_path), "--set", f"{ENGINE}.max_latency_regression_pct=25.1", "--baseline", str(base_path),
                 "--junit", str(tmp_path / "g.xml"), "--summary", str(tmp_path / "g.md"))  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "WARNING: baseline is from another machine or setting" in out.output and "Some Other CPU" in out.output
    assert "max_latency_regression_pct[batch=1]  25% <= 25.1% (p50 " in out.output
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "g.xml").getroot().iter("property")}
    assert props["baseline"] == str(base_path) and "another machine" in props["warning1"]
    assert "⚠️ **baseline is from another machine" in (tmp_path / "g.md").read_text()


def test_regression_gate_without_a_usable_baseline_fails(one_engine):
    report = one_engine
    gates = parse_gates('["*"]\nmax_latency_regression_pct = 10\n')
    (r,) = evaluate(gates, report).results
    assert not r.passed and "--baseline" in r.reason
    renamed = copy.deepcopy(report)
    renamed["engines"][0]["name"] = "onnxruntime-int8"
    (r,) = evaluate(gates, report, renamed).results
    assert not r.passed and "the baseline has no engine 'onnxruntime-fp32' (it has: onnxruntime-int8)" in r.reason


# ------------------------------------------------------------------------------------- bad input


BAD_GATES = {
    "unknown key": ('["x"]\nmin_cosin = 0.9\n', "key 'min_cosin' (did you mean 'min_cosine'?); valid keys: max_top1_drop_points"),
    "string value": ('["x"]\nmin_cosine = "high"\n', "key 'min_cosine' must be a number, got a string"),
    "boolean value": ('["x"]\nmax_abs_diff = true\n', "key 'max_abs_diff' must be a number, got a boolean"),
    "agreement above 1": ('["x"]\nmin_top1_agreement = 1.5\n', "key 'min_top1_agreement' must be between 0 and 1, got 1.5"),
    "negative p99": ('["x"]\nmax_p99_ms = { 1 = -5.0 }\n', "key 'max_p99_ms' at batch size 1 must be > 0, got -5.0"),
    "p99 not per batch": ('["x"]\nmax_p99_ms = 5.0\n', "key 'max_p99_ms' must be a table of batch size = threshold"),
    "batch size 0": ('["x"]\nmin_throughput_ips = { 0 = 5.0 }\n', "batch size '0' must be a whole number"),
    "batch size word": ('["x"]\nmin_throughput_ips = { b1 = 5.0 }\n', "batch size 'b1' must be a whole number"),
    "no batch sizes": ('["x"]\nmax_p99_ms = {}\n', "key 'max_p99_ms' names no batch sizes"),
    "nan": ('["x"]\nmin_cosine = nan\n', "key 'min_cosine' must be a finite number"),
    "inf": ('["x"]\nmax_abs_diff = inf\n', "key 'max_abs_diff' must be a finite number"),
    "huge integer": ('["x"]\nmax_abs_diff = 1' + "0" * 400 + "\n", "must be a finite number"),
    "key outside a table": ("min_cosine = 0.9\n", "key 'min_cosine' is outside any engine table"),
    "top-level scalar": ("threshold = 0.9\n", "top-level key 'threshold' is not an engine table"),
    "empty table": ('["x"]\n', 'table ["x"] sets no gates; valid keys:'),
    "empty file": ("", "defines no gates"),
    "not TOML": ('["x"\nmin_cosine = 1\n', "is not valid TOML"),
    "dotted table": ("[onnxruntime.int8]\nmin_cosine = 0.9\n", "unknown key 'int8'"),
    "regression not above -100": ('["x"]\nmax_latency_regression_pct = -100\n', "must be > -100, got -100"),
    "empty engine name": ('[""]\nmin_cosine = 0.9\n', "has an empty engine name"),
}


@pytest.mark.parametrize("case", sorted(BAD_GATES))
def test_bad_gates_files_exit_2_with_one_line_naming_the_key(report_path, tmp_path, case):
    text, message = BAD_GATES[case]
    gates = tmp_path / "gates.toml"
    gates.write_text(text)
    result = invoke("gate", str(report_path), "--gates", str(gates), "--junit", str(tmp_path / "g.xml"))
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith(f"error: gates file {gates}") and message in line, line
    assert not (tmp_path / "g.xml").exists()
    with pytest.raises(UserError, match="gates file"):  # the pure entry point says the same
        parse_gates(text)


BAD_SETS = {
    "no equals": ("onnxruntime-fp32.min_cosine", "expected ENGINE.KEY=VALUE"),
    "no key": ("min_cosine=0.9", "expected ENGINE.KEY=VALUE"),
    "unknown key": ("x.min_cos=0.9", "unknown key 'min_cos'"),
    "not a number": ("x.min_cosine=high", "is not a number"),
    "two values": ("x.min_cosine=0.9\ny = 2", "give one value after '='"),
    "out of range": ("x.min_top1_agreement=2", "must be between 0 and 1"),
    "batch on a scalar key": ("x.min_cosine.8=0.9", "'min_cosine' is not per batch size; use \"x.min_cosine=VALUE\""),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_bad_set_flags_exit_2(report_path, case):
    flag, message = BAD_SETS[case]
    result = invoke("gate", str(report_path), "--set", flag)
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("error: --set ") and message in line, line


def test_bad_reports_exit_2(report, report_path, tmp_path):
    cases = {"missing.json": (None, "does not exist"), "text.json": ("not json", "is not valid JSON")}
    other = copy.deepcopy(report)
    other["schema"] = "something/else"
    cases["schema.json"] = (json.dumps(other), "is not a resnet-deploy report")
    wrong = copy.deepcopy(report)
    wrong["engines"][0]["latency"][0]["p99_ms"] = "fast"
    cases["type.json"] = (json.dumps(wrong), "engines[0].latency[0].p99_ms must be a number or null, got str")
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        for args in (["gate", str(path), "--set", "*.min_cosine=0.9"], ["gate", str(report_path), "--set", "*.min_cosine=0.9",
                                                                         "--baseline", str(path)]):  # fmt: skip
            result = invoke(*args)
            assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    result = invoke("gate", str(report_path))
    assert result.exit_code == 2 and "give the thresholds" in result.output


# ------------------------------------------------------------------------------------- build --gates


def test_build_with_gates_writes_results_everywhere_and_exits_1(workload, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text(f'["{ENGINE}"]\nmin_top1_agreement = 0.99\nmax_abs_diff = 1e-3\n')
    out = tmp_path / "out"
    args = build_args(workload, out, "--batch-sizes", "1", "--iterations", "5", "--gates", str(gates),
                      "--set", f"{ENGINE}.min_throughput_ips.1=1e9", "--junit", str(tmp_path / "g.xml"),
                      "--summary", str(tmp_path / "g.md"))  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert f"PASS  {ENGINE}  min_top1_agreement" in result.output and "FAIL" in result.output
    stored = json.loads((out / "report.json").read_text())["gates"]
    assert [r["gate"] for r in stored["results"] if not r["passed"]] == ["min_throughput_ips[batch=1]"]
    assert stored["report"] == str(out.absolute() / "report.json")
    assert "Gates" in (out / "report.html").read_text() and "## resnet-deploy gates: ❌ 1 of 3" in (out / "report.md").read_text()
    assert ET.parse(tmp_path / "g.xml").getroot().get("failures") == "1"
    assert (tmp_path / "g.md").read_text().startswith("## resnet-deploy gates: ❌ 1 of 3 gates fail")


def test_build_rejects_a_bad_gates_file_before_building(workload, tmp_path):
    gates = tmp_path / "gates.toml"
    gates.write_text('["*"]\nmax_p99 = 3\n')
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--gates", str(gates)))
    assert result.exit_code == 2 and "unknown key 'max_p99'" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--junit", str(tmp_path / "g.xml")))
    assert result.exit_code == 2 and "give --gates FILE" in result.output


def test_junit_and_markdown_escape_odd_names(report):
    odd = copy.deepcopy(report)
    odd["engines"][0]["name"] = 'a|b<c>&"d\x01'
    result = evaluate(parse_gates('["a*"]\nmin_cosine = 2e-1\n'), odd).as_dict()
    root = ET.fromstring(junit(result).split("\n", 1)[1])
    assert root.find(".//testcase").get("classname") == 'resnet-deploy.gates.a|b<c>&"d?'
    assert "a\\|b<c>" in markdown(result)


# ------------------------------------------------------------------ the model's exact accuracy (reference_*)


def test_reference_gates_read_the_models_exact_accuracy_not_the_engines(built_reduced):
    """min_reference_* / max_reference_* gate the model's own accuracy (exact ONNX semantics), which does not depend on
    the CPU; the engine's as-run keys stay the engine's. An FP32 row has no reference accuracy: the gate fails, saying so."""
    code, output, out = built_reduced
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    row = next(e for e in report["engines"] if e["name"] == "openvino-int8-tensorrt")
    exact, as_run = row["reference_accuracy"], row["accuracy"]
    leaves = {
        ("min_reference_top1_agreement", None): exact["top1_agreement"],
        ("max_reference_top1_drop_points", None): exact["top1_drop_points"],
        ("min_reference_cosine", None): exact["cosine_min"],
        ("max_reference_abs_diff", None): exact["max_abs_diff"],
    }
    assert {k for k, _ in leaves} == REFERENCE_KEYS
    passing = evaluate(parse_gates(toml_for(leaves, row["name"])), report)
    assert passing.return_code == 0 and {r.value for r in passing.results} == set(leaves.values())
    for (key, batch), value in leaves.items():
        failing = {(key, batch): toward(value, SPEC_BY_KEY[key].bound, False)}
        if SPEC_BY_KEY[key].in_range(failing[(key, batch)]):
            assert evaluate(parse_gates(toml_for(failing, row["name"])), report).return_code == 1, key
    # the engine's own agreement is another number where the CPU's kernels lose accuracy (no VNNI), the same elsewhere
    own = evaluate(parse_gates(toml_for({("min_top1_agreement", None): exact["top1_agreement"]}, row["name"])), report)
    assert own.return_code == (0 if as_run["top1_agreement"] >= exact["top1_agreement"] else 1)
    fp32 = evaluate(parse_gates('["onnxruntime-fp32"]\nmin_reference_top1_agreement = 0.5\n'), report)
    (result,) = fp32.results
    assert fp32.return_code == 1 and result.value is None and "it is FP32" in result.reason
