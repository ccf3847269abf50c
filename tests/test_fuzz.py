"""Fuzzing (hypothesis) the readers of untrusted files: the image loader, the config and the gates parsers.

The regular suite runs a few seconds of each. A long run:

    RESNET_DEPLOY_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import io
import os
import signal
import tomllib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_deploy.config import _TOML_KEYS, load_toml_options
from resnet_deploy.data import MAX_IMAGE_PIXELS, UnreadableImage, load_image
from resnet_deploy.errors import UserError
from resnet_deploy.gates.spec import SPEC_BY_KEY, SPECS, parse_gates, parse_override, table_label

LONG = int(os.environ.get("RESNET_DEPLOY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=LONG or 150,
    deadline=None if LONG else 2000,  # ms per example; a long run reports slow inputs through the hang guard only
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not LONG,  # the regular suite is reproducible; a long run explores
    database=None,
)
HANG_SECONDS = 10


@contextmanager
def no_hang(seconds: int = HANG_SECONDS):
    """Fail (instead of waiting forever) when one input takes longer than `seconds`."""

    def _alarm(signum, frame):
        raise TimeoutError(f"took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------- image loader


def _seeds() -> dict[str, bytes]:
    """Small real files in every format the loader decodes (and the modes that take special paths)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    seeds = {}
    for name, image, fmt, kwargs in [
        ("png", rgb, "PNG", {}),
        ("png-rgba", rgb.convert("RGBA"), "PNG", {}),
        ("png-palette", rgb.convert("P"), "PNG", {}),
        ("png-16bit", Image.fromarray(rng.integers(0, 65535, (12, 16), dtype=np.uint16)), "PNG", {}),
        ("jpeg", rgb, "JPEG", {"quality": 80}),
        ("jpeg-cmyk", rgb.convert("CMYK"), "JPEG", {}),
        ("jpeg-progressive", rgb, "JPEG", {"progressive": True}),
        ("bmp", rgb, "BMP", {}),
        ("tiff", rgb, "TIFF", {"compression": "tiff_deflate"}),
        ("tiff-float", Image.fromarray(rng.random((12, 16), dtype=np.float32)), "TIFF", {}),
        ("webp", rgb, "WEBP", {"lossless": True}),
        ("ppm", rgb, "PPM", {}),
    ]:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kwargs)
        seeds[name] = buffer.getvalue()
    return seeds


SEEDS = _seeds()


@st.composite
def mutated_images(draw) -> bytes:
    """A real image file with bytes overwritten, a range removed or duplicated, and/or cut short."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["set", "delete", "duplicate", "big number"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set":
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        else:  # sizes, lengths and offsets live in 2- and 4-byte fields
            data[at : at + 4] = draw(
                st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff"])
            )
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check_loader(workdir: Path, data: bytes, suffix: str) -> None:
    path = workdir / f"input{suffix}"
    path.write_bytes(data)
    with no_hang():
        try:
            image = load_image(path)
        except UnreadableImage as exc:
            assert str(exc), "a refusal must say why"
            return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert image.width * image.height <= MAX_IMAGE_PIXELS


# numpy warnings in our own conversions are findings (a signalling NaN in a float TIFF was one);
# PIL's warnings about damaged metadata are expected noise.
@pytest.mark.filterwarnings("error::RuntimeWarning:resnet_deploy.data")
@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(mutated_images(), st.sampled_from([".png", ".jpg", ".webp"]))
def test_fuzz_load_image_with_mutated_real_files(workdir, data, suffix):
    _check_loader(workdir, data, suffix)


@pytest.mark.filterwarnings("error::RuntimeWarning:resnet_deploy.data")
@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_load_image_with_random_bytes(workdir, data):
    _check_loader(workdir, data, ".png")


def test_seeds_are_all_readable(workdir):
    """The seeds decode unmutated: the fuzzing starts from files the loader accepts."""
    for name, data in SEEDS.items():
        path = workdir / f"seed-{name}"
        path.write_bytes(data)
        assert load_image(path).mode == "RGB", name


# --------------------------------------------------------------------------------- config parser

_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["fp32", "int8,fp16", "cpu,cuda", "3x32x32", "1,8", "resnet18", "tensorrt", "../w.pth", ""]),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3))
_keys = st.one_of(st.sampled_from(sorted(_TOML_KEYS)), st.text(min_size=1, max_size=12))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in value if ord(c) < 0x10000)
    return f'"{escaped}"'


def _key(key: str) -> str:
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in key if ord(c) < 0x10000) + '"'


def _check_config(workdir: Path, text: str) -> None:
    path = workdir / "build.toml"
    path.write_text(text, encoding="utf-8")
    with no_hang():
        try:
            options = load_toml_options(path)
        except UserError as exc:
            message = str(exc)
            assert message.startswith(f"config file {path}") and "\n" not in message
            try:
                document = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                assert "is not valid TOML" in message
                return
            assert any(f"key {key!r}" in message for key in document), message  # names the key at fault
            return
    assert set(options) <= set(_TOML_KEYS)
    for key, value in options.items():
        expected = _TOML_KEYS[key][0]
        assert isinstance(value, expected) and (expected is bool or not isinstance(value, bool)), (key, value)


@FUZZ
@given(st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_config_documents(workdir, document):
    _check_config(workdir, "".join(f"{_key(k)} = {_toml_value(v)}\n" for k, v in document.items()))


@FUZZ
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=300))
def test_fuzz_config_text(workdir, text):
    _check_config(workdir, text)


@pytest.mark.parametrize("text", ["threads = 4\nthreads = 5\n", "[a]\nb = 1\n", 'precision = "fp32,int8"\n'])
def test_config_check_examples(workdir, text):
    """The property above on fixed inputs (duplicate key, a table, a valid value)."""
    _check_config(workdir, text)


# ---------------------------------------------------------------------------------- gates parser

_gate_keys = st.one_of(st.sampled_from([spec.key for spec in SPECS]), st.text(min_size=1, max_size=12))
_patterns = st.one_of(
    st.sampled_from(["onnxruntime-int8", "*-fp16", "*", "tensorrt-*", "[a-z]*", "", " ", "*-int8-tensorrt"]),
    st.text(max_size=20),
)
_batch_tables = st.dictionaries(
    st.one_of(st.integers(min_value=-5, max_value=10**7).map(str), st.text(max_size=4)), _scalars, max_size=3
)
_gate_values = st.one_of(_scalars, _batch_tables, st.lists(_scalars, max_size=2))


def _inline(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return _toml_value(value)


def _check_gates(text: str) -> None:
    with no_hang():
        try:
            gates = parse_gates(text, source="gates file g.toml")
        except UserError as exc:
            message = str(exc)
            assert message.startswith("gates file g.toml") and "\n" not in message, message
            try:
                document = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                assert "is not valid TOML" in message
                return
            # names the table at fault (or says there is none)
            assert "defines no gates" in message or any(table_label(p) in message for p in document), message
            return
    assert gates.tables
    for table in gates.tables:
        assert table.pattern.strip() and table.thresholds
        for threshold in table.thresholds:
            spec = SPEC_BY_KEY[threshold.key]
            assert isinstance(threshold.value, float) and spec.in_range(threshold.value), threshold
            assert (threshold.batch_size is not None) == spec.per_batch, threshold
            assert threshold.batch_size is None or threshold.batch_size >= 1


@FUZZ
@given(st.dictionaries(_patterns, st.dictionaries(_gate_keys, _gate_values, max_size=4), max_size=4))
def test_fuzz_gates_documents(document):
    text = "".join(
        f"[{_key(pattern)}]\n" + "".join(f"{_key(k)} = {_inline(v)}\n" for k, v in body.items())
        for pattern, body in document.items()
    )
    _check_gates(text)


@FUZZ
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=300))
def test_fuzz_gates_text(text):
    _check_gates(text)


@FUZZ
@given(
    st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=80),
        st.builds(
            lambda p, k, b, v: f"{p}.{k}{b}={v}",
            _patterns,
            _gate_keys,
            st.sampled_from(["", ".1", ".8", ".0", ".x", ".99999999"]),
            st.one_of(st.floats(allow_nan=True).map(repr), st.integers().map(str), st.text(max_size=8)),
        ),
    )
)
def test_fuzz_gate_overrides(text):
    with no_hang():
        try:
            table = parse_override(text)
        except UserError as exc:
            assert str(exc).startswith("--set ") and "\n" not in str(exc), str(exc)
            return
    (threshold,) = table.thresholds
    assert SPEC_BY_KEY[threshold.key].in_range(threshold.value)
