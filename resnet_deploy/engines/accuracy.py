"""How closely a runner follows a reference runner (and the labels, when the data has them): `Accuracy`.

The reference runs once per data set; its logits go to a temporary memory-mapped file, so memory stays
bounded for any data set size (`ReferenceOutputs`). Each runner then streams the data again and is compared
batch by batch (`validate`). Used by the validate stage (pipeline/validate.py) and by the mixed-precision
search, which measures its candidate INT8 models the same way (calibration/sensitivity.py).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from ..data import Dataset
from ..errors import UserError
from ..progress import Progress
from .base import Runner


def _id_hashes(ids: tuple[str, ...]) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids], dtype=np.uint64)


class ReferenceOutputs:
    """The reference's logits for every usable sample of a data set, in iteration order."""

    def __init__(self, capacity: int, num_classes: int) -> None:
        self._file = tempfile.TemporaryFile(prefix="resnet-deploy-reference-")
        self.logits = np.memmap(self._file, dtype=np.float32, mode="w+", shape=(max(capacity, 1), num_classes))
        self.ids = np.zeros(max(capacity, 1), dtype=np.uint64)
        self.labels: np.ndarray | None = None
        self.count = 0

    @classmethod
    def compute(
        cls, runner: Runner, dataset: Dataset, num_classes: int, batch_size: int = 32, progress: Progress = Progress()
    ) -> "ReferenceOutputs":
        ref = cls(len(dataset), num_classes)
        labels = np.full(len(dataset), -1, dtype=np.int64) if dataset.has_labels else None
        batches = dataset.iter_batches(batch_size)
        for batch in progress.track(batches, total=_num_batches(dataset, batch_size), description=f"reference {runner.name}"):
            logits = runner.infer(batch.images)
            if logits.shape[1] != num_classes:
                raise RuntimeError(f"{runner.name} returned {logits.shape[1]} classes, expected {num_classes}")
            end = ref.count + len(logits)
            ref.logits[ref.count : end] = logits
            ref.ids[ref.count : end] = _id_hashes(batch.ids)
            if labels is not None and batch.labels is not None:
                labels[ref.count : end] = batch.labels
            ref.count = end
        ref.labels = None if labels is None else labels[: ref.count]
        return ref

    def close(self) -> None:
        del self.logits
        self._file.close()

    def __enter__(self) -> "ReferenceOutputs":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _num_batches(dataset: Dataset, batch_size: int) -> int:
    return -(-len(dataset) // batch_size)


CONFUSIONS_KEPT = 20  # the most frequent (true class, predicted class) pairs kept per model


@dataclass(frozen=True)
class ClassAccuracy:
    """Per class of a labelled data set: its images, how many the engine and the reference got right (top-1), and
    the most frequent confusions of each, as (true class, predicted class, images), most frequent first."""

    samples: tuple[int, ...]
    correct: tuple[int, ...]
    correct_ref: tuple[int, ...]
    confusions: tuple[tuple[int, int, int], ...]
    confusions_ref: tuple[tuple[int, int, int], ...]

    def reference(self) -> dict[str, object]:
        """The reference's own counts (report.json `reference.per_class`)."""
        return {"samples": self.samples, "correct": self.correct_ref, "confusions": self.confusions_ref}


def _top_confusions(pairs: dict[tuple[int, int], int]) -> tuple[tuple[int, int, int], ...]:
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:CONFUSIONS_KEPT]
    return tuple((true, pred, count) for (true, pred), count in ranked)


@dataclass(frozen=True)
class Accuracy:
    """Agreement with the reference and (when labelled) accuracy. Fractions are 0..1, drops in points."""

    samples: int
    top1_agreement: float
    top5_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    cosine_min: float
    cosine_mean: float
    nonfinite_outputs: int
    top1: float | None
    top1_ref: float | None
    top5: float | None
    top5_ref: float | None
    top1_drop_points: float | None
    per_class: ClassAccuracy | None = None  # labelled data only

    @property
    def passed(self) -> bool:
        """False when the engine produced NaN/Inf: such a result is a failure, never a number."""
        return self.nonfinite_outputs == 0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        if not self.passed:  # never report numbers computed from NaN/Inf outputs
            for key in ("max_abs_diff", "mean_abs_diff", "cosine_min", "cosine_mean"):
                out[key] = None
        return out


class _Tally:
    """Streaming sums for `Accuracy`."""

    def __init__(self, topk: int) -> None:
        self.topk = topk
        self.n = self.top1_agree = self.topk_agree = self.nonfinite = 0
        self.abs_sum = 0.0
        self.elements = 0
        self.max_abs = 0.0
        self.cos_min = float("inf")
        self.cos_sum = 0.0
        self.labelled = self.top1 = self.top1_ref = self.topk_hit = self.topk_hit_ref = 0
        self.class_samples = self.class_correct = self.class_correct_ref = None
        self.confusions: dict[tuple[int, int], int] = {}
        self.confusions_ref: dict[tuple[int, int], int] = {}

    def _add_classes(self, labels: np.ndarray, out_top1: np.ndarray, ref_top1: np.ndarray, classes: int) -> None:
        if self.class_samples is None:
            self.class_samples, self.class_correct, self.class_correct_ref = (np.zeros(classes, np.int64) for _ in range(3))
        known = (labels >= 0) & (labels < classes)  # labels outside the classifier were refused before (check_labels)
        labels, out_top1, ref_top1 = labels[known], out_top1[known], ref_top1[known]
        self.class_samples += np.bincount(labels, minlength=classes)
        self.class_correct += np.bincount(labels[out_top1 == labels], minlength=classes)
        self.class_correct_ref += np.bincount(labels[ref_top1 == labels], minlength=classes)
        for predicted, pairs in ((out_top1, self.confusions), (ref_top1, self.confusions_ref)):
            wrong = (predicted != labels) & (predicted >= 0)  # -1: a NaN/Inf output predicts nothing
            found, counts = np.unique(labels[wrong] * classes + predicted[wrong], return_counts=True)
            for code, count in zip(found.tolist(), counts.tolist()):
                key = divmod(code, classes)
                pairs[key] = pairs.get(key, 0) + count

    def add(self, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> None:
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        finite = np.isfinite(out64).all(axis=1)
        self.nonfinite += int((~finite).sum())
        ref_top1 = ref64.argmax(axis=1)
        out_top1 = np.where(finite, np.nan_to_num(out64, nan=-np.inf).argmax(axis=1), -1)
        out_topk = np.argsort(-np.nan_to_num(out64, nan=-np.inf), axis=1, kind="stable")[:, : self.topk]
        self.n += len(ref)
        self.top1_agree += int((out_top1 == ref_top1).sum())
        self.topk_agree += int(((out_topk == ref_top1[:, None]).any(axis=1) & finite).sum())
        if finite.any():
            diff = np.abs(ref64[finite] - out64[finite])
            self.abs_sum += float(diff.sum())
            self.elements += diff.size
            self.max_abs = max(self.max_abs, float(diff.max()))
            a, b = ref64[finite], out64[finite]
            denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 1.0)
            self.cos_min = min(self.cos_min, float(cos.min()))
            self.cos_sum += float(cos.sum())
        if labels is not None:
            ref_topk = np.argsort(-ref64, axis=1, kind="stable")[:, : self.topk]
            self.labelled += len(labels)
            self.top1 += int((out_top1 == labels).sum())
            self.top1_ref += int((ref_top1 == labels).sum())
            self.topk_hit += int(((out_topk == labels[:, None]).any(axis=1) & finite).sum())
            self.topk_hit_ref += int((ref_topk == labels[:, None]).any(axis=1).sum())
            self._add_classes(labels, out_top1, ref_top1, ref64.shape[1])

    def result(self) -> Accuracy:
        n = max(self.n, 1)
        finite_rows = self.n - self.nonfinite
        top1 = top1_ref = top5 = top5_ref = drop = None
        if self.labelled:
            top1, top1_ref = self.top1 / self.labelled, self.top1_ref / self.labelled
            top5, top5_ref = self.topk_hit / self.labelled, self.topk_hit_ref / self.labelled
            drop = (top1_ref - top1) * 100.0
        return Accuracy(
            samples=self.n,
            top1_agreement=self.top1_agree / n,
            top5_agreement=self.topk_agree / n,
            max_abs_diff=self.max_abs if finite_rows else float("nan"),
            mean_abs_diff=self.abs_sum / self.elements if self.elements else float("nan"),
            cosine_min=self.cos_min if finite_rows else float("nan"),
            cosine_mean=self.cos_sum / finite_rows if finite_rows else float("nan"),
            nonfinite_outputs=self.nonfinite,
            top1=top1,
            top1_ref=top1_ref,
            top5=top5,
            top5_ref=top5_ref,
            top1_drop_points=drop,
            per_class=None if self.class_samples is None else ClassAccuracy(
                tuple(self.class_samples.tolist()), tuple(self.class_correct.tolist()),
                tuple(self.class_correct_ref.tolist()), _top_confusions(self.confusions),
                _top_confusions(self.confusions_ref),
            ),
        )  # fmt: skip


def validate(
    runner: Runner,
    dataset: Dataset,
    reference: ReferenceOutputs,
    batch_size: int = 32,
    progress: Progress = Progress(),
) -> Accuracy:
    """Stream `dataset` through `runner` and compare with the reference logits, sample by sample."""
    tally = _Tally(topk=min(5, reference.logits.shape[1]))
    row = 0
    batches = dataset.iter_batches(batch_size)
    for batch in progress.track(batches, total=_num_batches(dataset, batch_size), description=f"validate {runner.name}"):
        out = runner.infer(batch.images)
        if out.shape[1] != reference.logits.shape[1]:
            raise UserError(
                f"{runner.name} outputs {out.shape[1]} classes, the reference {reference.logits.shape[1]}; "
                "give the model exported from these weights"
            )
        end = row + len(out)
        if end > reference.count or not np.array_equal(reference.ids[row:end], _id_hashes(batch.ids)):
            raise UserError("the validation data changed while it was being read; run again on stable files")
        labels = None if reference.labels is None else reference.labels[row:end]
        tally.add(np.asarray(reference.logits[row:end]), out, labels)
        row = end
    if row != reference.count:
        raise UserError("the validation data changed while it was being read; run again on stable files")
    return tally.result()
