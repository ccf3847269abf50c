"""A real, small workload for the demo and the tests: a ResNet-18 trained on scikit-learn's digits.

The 8x8 digits (1797 images, 10 classes) are upsampled to 32x32 and written as 8-bit grayscale PNG class
folders (train / calib / val splits); the model is trained on the train split through resnet-deploy's
own data loader and preprocessing, so the demo's build sees exactly what the model was trained on.

    python -m resnet_deploy.examples.digits --out demo/data
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARCH = "resnet18"
INPUT_SIZE = (3, 32, 32)
SPLITS = {"train": 0.6, "calib": 0.15, "val": 0.25}


@dataclass(frozen=True)
class DigitsWorkload:
    root: Path
    weights: Path
    train: Path
    calib: Path
    val: Path
    test_accuracy: float


def write_images(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write the digits as 32x32 PNGs in ImageFolder layout, one folder per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)  # (1797, 8, 8) in 0..255
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    bounds = np.cumsum([0] + [round(f * len(images)) for f in SPLITS.values()])
    bounds[-1] = len(images)
    paths = {}
    for (split, _), start, end in zip(SPLITS.items(), bounds[:-1], bounds[1:]):
        folder = root / split
        for index in order[start:end]:
            label = int(digits.target[index])
            target = folder / str(label) / f"{index:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").resize(INPUT_SIZE[1:], Image.Resampling.BILINEAR).save(target)
        paths[split] = folder
    return paths


def train(train_dir: Path, epochs: int = 6, seed: int = 0, threads: int | None = None, arch_name: str = ARCH):
    """Train a timm ResNet-18 (or another family member, `arch_name`; 10 classes) on the PNG folder; returns the
    model in eval mode."""
    import torch

    from ..data import ImageFolderDataset
    from ..models import create_model, default_preprocess, resolve_arch

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    arch = resolve_arch(arch_name)
    model = create_model(arch, 10)
    preprocess = default_preprocess(arch, model, INPUT_SIZE)
    dataset = ImageFolderDataset.scan(train_dir, preprocess, option="train")
    batches = list(dataset.iter_batches(len(dataset)))
    x = torch.from_numpy(batches[0].images)
    y = torch.from_numpy(batches[0].labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            # light augmentation: random shifts of up to 2 pixels
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
            batch = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def accuracy(model, folder: Path) -> float:
    import torch

    from ..data import ImageFolderDataset
    from ..models import default_preprocess, resolve_arch

    preprocess = default_preprocess(resolve_arch(ARCH), model, INPUT_SIZE)
    correct = total = 0
    with torch.inference_mode():
        for batch in ImageFolderDataset.scan(folder, preprocess).iter_batches(256):
            pred = model(torch.from_numpy(batch.images)).argmax(1).numpy()
            correct += int((pred == batch.labels).sum())
            total += len(pred)
    return correct / total


def make_workload(root: Path, epochs: int = 6, seed: int = 0) -> DigitsWorkload:
    """Images + trained weights (`weights.pth`, a plain state_dict) under `root`."""
    import torch

    root = Path(root)
    paths = write_images(root, seed)
    model = train(paths["train"], epochs=epochs, seed=seed)
    weights = root / "weights.pth"
    torch.save(model.state_dict(), weights)
    return DigitsWorkload(root, weights, paths["train"], paths["calib"], paths["val"], accuracy(model, paths["val"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the images and weights.pth")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    workload = make_workload(args.out, args.epochs, args.seed)
    print(
        f"trained {ARCH} on the digits in {time.perf_counter() - started:.1f} s: "
        f"{workload.test_accuracy * 100:.1f}% top-1 on {workload.val}; weights in {workload.weights}"
    )


if __name__ == "__main__":
    main()
