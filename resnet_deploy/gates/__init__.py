"""Accuracy and latency gates for CI: thresholds per engine (TOML), applied to a report, rendered for CI.

gates = parse_gates(text)                      # or load_gates(path); strict, raises UserError
result = evaluate(gates, report, baseline)     # report dicts as in report.json
result.return_code                             # 0 all pass, 1 any fails
"""

from .check import GateReport, GateResult, evaluate
from .spec import SPECS, Bound, EngineGates, Gates, GateSpec, Threshold, load_gates, parse_gates, parse_override

__all__ = [
    "SPECS",
    "Bound",
    "EngineGates",
    "GateReport",
    "GateResult",
    "GateSpec",
    "Gates",
    "Threshold",
    "evaluate",
    "load_gates",
    "parse_gates",
    "parse_override",
]
