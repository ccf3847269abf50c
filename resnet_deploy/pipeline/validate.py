"""The validate stage: the PyTorch reference once over the validation data, then each engine compared with it.

The comparison itself (`ReferenceOutputs`, `validate`, `Accuracy`) is engines/accuracy.py.
"""

from __future__ import annotations

from ..data import Dataset
from ..engines.accuracy import Accuracy, ClassAccuracy, ReferenceOutputs, validate  # noqa: F401 - re-exported
from ..engines.base import Runner
from ..progress import Progress


def validate_all(
    reference: Runner,
    runners: list[Runner],
    dataset: Dataset,
    num_classes: int,
    batch_size: int = 32,
    progress: Progress = Progress(),
) -> list[Accuracy]:
    """The reference once over `dataset`, then each runner in its own pass, compared with it."""
    with reference:
        ref = ReferenceOutputs.compute(reference, dataset, num_classes, batch_size, progress)
    results = []
    with ref:
        for runner in runners:
            with runner:
                results.append(validate(runner, dataset, ref, batch_size, progress))
    return results
