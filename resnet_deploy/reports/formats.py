"""The number formats every page shares (report.md, report.html, `resnet-deploy compare`): a missing value is "n/a".

`fmt` is a format spec (".4g", "+.2f", ...); "%" shows a fraction of 1 as a percentage (and a delta in points).
"""

from __future__ import annotations

MARKDOWN = ".3g"  # report.md's default precision (report.html and compare show ".4g")


def num(value: float | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def pct(value: float | None) -> str:
    """A fraction of 1 as a percentage with two decimals."""
    return "n/a" if value is None else f"{value * 100:.2f}%"


def value(value: float | None, fmt: str = ".4g") -> str:
    """`pct` for fmt "%", else `num`."""
    return pct(value) if fmt == "%" else num(value, fmt)


def delta(old: float | None, new: float | None, fmt: str = ".4g") -> str:
    """The absolute change, signed (in points for fractions shown as percentages)."""
    if old is None or new is None:
        return "n/a"
    return f"{(new - old) * 100:+.2f} pts" if fmt == "%" else format(new - old, "+" + fmt)


def pct_change(old: float | None, new: float | None) -> str:
    """The relative change in percent, signed; n/a from zero."""
    if old is None or new is None or old == 0:
        return "n/a"
    return f"{(new - old) / abs(old) * 100:+.1f}%"
