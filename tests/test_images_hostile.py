"""Hostile image folders: every bad file is skipped with its reason and counted, never a crash or a hang.

Zero-byte files, truncated JPEGs, 1x1 images, decompression bombs (refused by the pixel limit before
decoding), resize bombs (a 1xN strip), wrong extensions, formats PIL knows but we never decode, FIFOs,
dangling links, symlink loops, unreadable files; a folder with nothing usable is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.cli import cli
from resnet_deploy.data import MAX_IMAGE_PIXELS, Preprocess, UnreadableImage, load_image, open_dataset

from .conftest import build_args, one_error_line, run_cli


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height zeros: a few hundred KB that decode to width*height pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = max(1, (4 << 20) // len(row))
    data = b"".join(compressor.compress(row * min(rows_per_block, height - y)) for y in range(0, height, rows_per_block))
    data += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _noise_jpeg(path: Path, size: int = 256) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.read_bytes()


def hostile_folder(root: Path) -> tuple[dict[str, str], set[str]]:
    """Class folders `a` and `b` with good images and every kind of bad file.

    Returns ({bad file: expected reason}, {good files}).
    """
    a, b = root / "a", root / "b"
    a.mkdir(parents=True)
    b.mkdir()
    good = set()
    for folder, count in ((a, 3), (b, 2)):
        for i in range(count):
            Image.new("RGB", (40, 30), (60 * i, 90, 200)).save(folder / f"good{i}.png")
            good.add(str(folder / f"good{i}.png"))
    Image.new("RGB", (20, 20), (255, 0, 0)).save(a / "png-named.jpg", format="PNG")
    Image.new("RGB", (1, 1), (0, 255, 0)).save(a / "one-pixel.png")
    good |= {str(a / "png-named.jpg"), str(a / "one-pixel.png")}

    (a / "empty.png").write_bytes(b"")
    full = _noise_jpeg(a / "cut.jpg")
    (a / "cut.jpg").write_bytes(full[: len(full) * 6 // 10])
    (a / "text.png").write_text("this is not an image\n")
    (a / "postscript.jpg").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    png_bomb(a / "bomb.png", 20_000, 20_000)  # 400 M pixels: above twice PIL's limit (its error)
    png_bomb(a / "big.png", 10_000, 10_000)  # 100 M pixels: between PIL's warning and error (our limit)
    png_bomb(a / "strip.png", 1, 120_000)  # fine alone; resized to a shorter side of 256 it is 31 G pixels
    os.mkfifo(a / "fifo.png")  # opening it would block forever
    (a / "dangling.png").symlink_to(a / "nowhere.png")
    (a / "self.png").symlink_to(a / "self.png")  # a symlink loop
    (b / "loop").symlink_to(b)  # a folder loop: b/loop/loop/...
    (b / "up").symlink_to(root)  # a link to the data set's root: class a would be read again as class b
    (b / "again").symlink_to(a)  # another class folder: the same
    (b / "twice-1").symlink_to(root.parent / "extra")  # a folder outside, linked twice: read once
    (b / "twice-2").symlink_to(root.parent / "extra")
    (root.parent / "extra").mkdir(exist_ok=True)
    Image.new("RGB", (12, 12)).save(root.parent / "extra" / "x.png")
    good.add(str(b / "twice-1" / "x.png"))
    bad = {
        "empty.png": "empty file (0 bytes)",
        "cut.jpg": "image file is truncated",
        "text.png": "cannot identify image file",
        "postscript.jpg": "cannot identify image file",  # PIL's EPS decoder (Ghostscript) is never tried
        "bomb.png": "could be decompression bomb",
        "big.png": f"10000x10000 pixels is above the limit of {MAX_IMAGE_PIXELS}",
        "strip.png": "1x120000 pixels would be resized to",
        "fifo.png": "not a regular file",
        "dangling.png": "No such file or directory",
        "self.png": "Too many levels of symbolic links",
    }
    return {str(a / name): reason for name, reason in bad.items()}, good


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # in-process: PIL warns, then we refuse
def test_every_bad_file_is_skipped_with_its_reason(tmp_path):
    bad, good = hostile_folder(tmp_path / "val")
    dataset = open_dataset(tmp_path / "val", Preprocess())  # 224x224: resize to 256 first
    loaded = []
    for batch in dataset.iter_batches(4):
        assert np.isfinite(batch.images).all() and batch.images.shape[1:] == (3, 224, 224)
        loaded += batch.ids
    skipped = dataset.skipped
    assert set(skipped) == set(bad)
    for path, reason in bad.items():
        assert reason in skipped[path], (path, skipped[path])
    assert sorted(loaded) == sorted(good)  # each image once, under its own class; no loop followed


def test_one_pixel_image_becomes_a_uniform_input(tmp_path):
    Image.new("RGB", (1, 1), (0, 255, 0)).save(tmp_path / "p.png")
    (batch,) = open_dataset(tmp_path, Preprocess()).iter_batches(1)
    images = batch.images
    mean, std = np.array(Preprocess().mean), np.array(Preprocess().std)
    expected = (np.array([0.0, 1.0, 0.0]) - mean) / std
    np.testing.assert_allclose(images[0].mean(axis=(1, 2)), expected, rtol=1e-5)
    assert images[0].std(axis=(1, 2)).max() < 1e-5


def test_bombs_are_refused_before_decoding(tmp_path):
    """In a fresh process: peak memory stays far below what decoding a bomb needs (400 MB and more)."""
    png_bomb(tmp_path / "bomb.png", 20_000, 20_000)
    png_bomb(tmp_path / "big.png", 10_000, 10_000)
    code = (
        "import resource, sys, warnings\n"
        "from resnet_deploy.data import UnreadableImage, load_image\n"  # imports torch too (the package's __init__)
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "warnings.simplefilter('error')\n"  # as under `python -W error`: PIL's warning becomes an exception
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        load_image(name)\n"
        "    except UnreadableImage as exc:\n"
        "        print('refused', exc)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bomb.png"), str(tmp_path / "big.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("refused") and lines[1].startswith("refused"), proc.stdout
    assert int(lines[2]) < 100, f"peak RSS grew by {lines[2]} MiB: a bomb was decoded"


def test_decompression_bomb_warning_is_turned_into_a_skip(tmp_path):
    png_bomb(tmp_path / "big.png", 10_000, 10_000)
    with pytest.warns(Image.DecompressionBombWarning):  # PIL warns, in this process (not in the CLI: see below)
        with pytest.raises(UnreadableImage, match="above the limit"):
            load_image(tmp_path / "big.png")


def test_unreadable_file_is_skipped(tmp_path):
    """Run as an unprivileged user: root reads a chmod 000 file anyway (setpriv drops to nobody)."""
    command = [sys.executable, "-c", _COUNT_USABLE]
    folder = tmp_path
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, where chmod 000 does not stop reading, and setpriv is missing to drop privileges")
        folder = Path(tempfile.mkdtemp(prefix="resnet-deploy-permissions-"))  # pytest's tmp_path is root's alone
        folder.chmod(0o755)
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    for i in range(2):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    (folder / "0.png").chmod(0)
    try:
        proc = subprocess.run([*command, str(folder)], capture_output=True, text=True, timeout=120)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)
    assert proc.returncode == 0, proc.stderr
    usable, skipped = proc.stdout.split(" ", 1)
    assert usable == "1" and "Permission denied" in json.loads(skipped)[str(folder / "0.png")]


_COUNT_USABLE = """
import json, sys
from resnet_deploy.data import Preprocess, open_dataset
dataset = open_dataset(sys.argv[1], Preprocess(input_size=(3, 32, 32)))
print(sum(len(batch.ids) for batch in dataset.iter_batches(8)), json.dumps(dataset.skipped))
"""


def test_folder_with_nothing_usable_is_an_error_through_the_cli(tmp_path, workload):
    val = tmp_path / "val"
    (val / "0").mkdir(parents=True)
    (val / "0" / "a.png").write_bytes(b"")
    (val / "0" / "b.jpg").write_text("text")
    os.mkfifo(val / "0" / "c.png")
    result = CliRunner().invoke(cli, build_args(workload, tmp_path / "out", "--val-data", str(val), "--calib-data", str(val)))
    one_error_line(result, "all 3 files failed to decode")
    assert "no usable image" in result.output and not (tmp_path / "out").exists()


def test_hostile_validation_folder_through_the_console_script(tmp_path, workload):
    """A real build on digits images mixed with every bad file: skipped and counted in report.json,
    no warning or traceback on stderr, no hang (the FIFO)."""
    val = tmp_path / "val"
    bad, _ = hostile_folder(tmp_path / "hostile")
    for digit in sorted(p.name for p in workload.val.iterdir()):
        (val / digit).mkdir(parents=True)
        for image in sorted((workload.val / digit).iterdir())[:3]:
            shutil.copy(image, val / digit / image.name)
    for path in bad:  # the bad files go into class 0 (links and FIFOs are recreated, not copied)
        source, target = Path(path), val / "0" / Path(path).name
        if source.is_symlink():
            target.symlink_to(target if source.name == "self.png" else val / "nowhere.png")
        elif source.name == "fifo.png":
            os.mkfifo(target)
        else:
            shutil.copy(source, target)
    out = tmp_path / "out"
    args = build_args(workload, out, "--val-data", str(val), "--batch-sizes", "1", "--iterations", "2", "--warmup", "0")
    args.remove("--quiet")
    proc = run_cli(*args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((out / "report.json").read_text())
    skipped = report["data"]["val"]["skipped"]
    assert skipped == len(bad) and report["engines"][0]["accuracy"]["samples"] == 30
    for path, reason in report["data"]["val"]["skipped_examples"].items():
        assert bad[str(tmp_path / "hostile" / "a" / Path(path).name)] in reason, (path, reason)
