"""Data sets: ImageFolder order like torchvision, flat folders, .npz streaming, every image mode, skipping."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.data import ImageFolderDataset, NpzDataset, Preprocess, load_image, open_dataset
from resnet_deploy.errors import UserError

PRE = Preprocess(input_size=(3, 32, 32), interpolation="bilinear", crop_pct=1.0)


def _all(dataset, batch_size=7):
    batches = list(dataset.iter_batches(batch_size))
    images = np.concatenate([b.images for b in batches])
    labels = None if batches[0].labels is None else np.concatenate([b.labels for b in batches])
    ids = [i for b in batches for i in b.ids]
    return images, labels, ids


def test_class_folders_match_torchvision(workload):
    from torchvision.datasets import ImageFolder

    ours = open_dataset(workload.val, PRE)
    theirs = ImageFolder(str(workload.val))
    assert ours.classes == tuple(theirs.classes)
    assert [str(p) for p in ours.files] == [p for p, _ in theirs.samples]
    assert list(ours.labels) == [label for _, label in theirs.samples]


def test_preprocessing_is_timm_eval_transform(workload):
    from timm.data import create_transform

    pre = Preprocess(input_size=(3, 32, 32), interpolation="bicubic", crop_pct=0.95)
    images, labels, ids = _all(open_dataset(workload.val, pre))
    transform = create_transform(input_size=(3, 32, 32), interpolation="bicubic", crop_pct=0.95)
    for k in (0, 17, len(ids) - 1):
        expected = transform(Image.open(ids[k]).convert("RGB")).numpy()
        np.testing.assert_array_equal(images[k], expected)
    assert images.dtype == np.float32 and images.shape[1:] == (3, 32, 32)


def test_data_set_can_be_read_twice(workload):
    dataset = open_dataset(workload.calib, PRE)
    first, second = _all(dataset, 16), _all(dataset, 5)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(5):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = open_dataset(tmp_path, PRE)
    images, labels, _ = _all(dataset)
    assert labels is None and not dataset.has_labels and images.shape == (5, 3, 32, 32)


def _modes(folder):
    """The same picture in every awkward mode the loader must turn into RGB."""
    folder.mkdir()
    base = np.zeros((20, 20, 3), dtype=np.uint8)
    base[:, :10] = (200, 100, 50)
    rgb = Image.fromarray(base)
    rgb.save(folder / "rgb.png")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.save(folder / "rgb.webp", lossless=True)
    rgb.save(folder / "rgb.bmp")
    sixteen = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "gray16.png")
    rgb.convert("P").save(folder / "palette.png")
    return folder


def test_every_image_mode_becomes_rgb(tmp_path):
    folder = _modes(tmp_path / "modes")
    for path in sorted(folder.iterdir()):
        image = load_image(path)
        assert image.mode == "RGB" and image.size == (20, 20), path.name
    gray = np.asarray(load_image(folder / "gray.png"))
    gray16 = np.asarray(load_image(folder / "gray16.png"))
    np.testing.assert_array_equal(gray, gray16)  # 16-bit is scaled to 8 bits, not clipped at 255
    cmyk = np.asarray(load_image(folder / "cmyk.jpg")).astype(int)
    assert abs(cmyk[5, 2] - np.array([200, 100, 50])).max() < 20


def test_transparent_pixels_are_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    good = tmp_path / "a"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 10)).save(good / f"{i}.png")
    (good / "empty.png").write_bytes(b"")
    (good / "text.jpg").write_text("this is not a jpeg")
    full = good / "cut.jpg"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(full)
    full.write_bytes(full.read_bytes()[:100])
    dataset = open_dataset(tmp_path, PRE)
    images, labels, ids = _all(dataset)
    assert len(dataset) == 6 and images.shape[0] == 3 and list(labels) == [0, 0, 0]
    assert set(dataset.skipped) == {str(good / "empty.png"), str(good / "text.jpg"), str(good / "cut.jpg")}


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable image"):
        _all(open_dataset(tmp_path, PRE))


def test_empty_or_missing_folders(tmp_path):
    with pytest.raises(UserError, match="holds no images"):
        open_dataset(tmp_path, PRE)
    with pytest.raises(UserError, match="does not exist"):
        open_dataset(tmp_path / "nope", PRE)


def test_npz_streams_rows_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((23, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, 23)
    np.savez_compressed(tmp_path / "d.npz", images=images, labels=labels)
    dataset = open_dataset(tmp_path / "d.npz", PRE)
    got, got_labels, _ = _all(dataset, 5)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(got_labels, labels)
    picked = dataset.select([20, 3, 7])
    got, got_labels, _ = _all(picked, 2)
    np.testing.assert_array_equal(got, images[[3, 7, 20]])  # read in file order
    np.testing.assert_array_equal(got_labels, labels[[3, 7, 20]])


def test_npz_without_labels(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 3, 32, 32), np.float32))
    images, labels, _ = _all(open_dataset(tmp_path / "d.npz", PRE))
    assert labels is None and images.shape == (4, 3, 32, 32)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"pixels": np.zeros((2, 3, 32, 32), np.float32)}, "no 'images' array"),
        ({"images": np.zeros((2, 3, 16, 16), np.float32)}, r"expected \(N, 3, 32, 32\)"),
        ({"images": np.zeros((2, 3, 32, 32), np.float64)}, "float32"),
        ({"images": np.zeros((2, 3, 32, 32), np.float32), "labels": np.zeros(3, np.int64)}, "'labels' must be N=2"),
        ({"images": np.zeros((2, 3, 32, 32), np.float32), "labels": np.zeros(2, np.float32)}, "'labels' must be"),
        ({"images": np.zeros((0, 3, 32, 32), np.float32)}, "empty"),
    ],
)
def test_bad_npz_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=message):
        open_dataset(tmp_path / "d.npz", PRE)


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="Python objects|expected"):
        open_dataset(tmp_path / "d.npz", PRE)


def test_not_a_zip(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"plain text")
    with pytest.raises(UserError, match="not a readable .npz"):
        NpzDataset.open(tmp_path / "d.npz", (3, 32, 32))


def test_select_keeps_labels_for_image_folders(workload):
    dataset = open_dataset(workload.val, PRE)
    subset = dataset.select([0, len(dataset) - 1])
    assert isinstance(subset, ImageFolderDataset)
    _, labels, _ = _all(subset)
    assert list(labels) == [dataset.labels[0], dataset.labels[-1]]
