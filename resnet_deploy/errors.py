"""Exceptions that carry their exit code.

A user can cause a `UserError` (missing file, wrong architecture, bad option, unreadable data): exit 2.
A stage that fails its own verification (fold mismatch, export parity) raises `CheckFailed`: exit 1.
Messages are one line that says what was wrong and what to do.
"""

from __future__ import annotations


class ResnetDeployError(Exception):
    """Base class: every error the tool raises on purpose."""

    exit_code = 1


class UserError(ResnetDeployError):
    """Bad input or usage; the message names the problem and the fix."""

    exit_code = 2


class MissingDependency(UserError):
    """An optional component (TensorRT, a GPU, an execution provider) is not available."""


class CheckFailed(ResnetDeployError):
    """A stage ran but failed its own verification (e.g. folded model disagrees with the original)."""

    exit_code = 1
