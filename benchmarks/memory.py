"""Peak memory of `resnet-deploy build` and `validate` as the validation folder grows (1k -> 10k images).

Each command runs as its own process of the installed console script; its peak resident set size is
the kernel's `ru_maxrss` for that process, read with `os.wait4` when it exits (so nothing else in this
script counts). Each is run `--repeat` times: the peak varies by up to ~100 MiB from run to run
whatever the folder size (which thread gets which malloc arena in PyTorch, ONNX Runtime and the
decoder threads), so the median and the range are printed. `--trace` also samples the resident size
of one `validate` on the largest folder every 0.5 s (from /proc), to show it stays flat while the
images stream. The images are the digits PNGs (32x32, from resnet_deploy.examples.digits) copied
round-robin into class folders of the requested size; the model is the ResNet-18 trained on them.

    .venv/bin/python benchmarks/memory.py                  # 1000 and 10000 images, in a temporary folder
    .venv/bin/python benchmarks/memory.py --sizes 1000,10000,30000 --repeat 1 --work /tmp/mem --trace
    .venv/bin/python benchmarks/memory.py --quick          # a smoke run: 40 and 80 images, one run each
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "resnet-deploy"


def run(args: list[str], log: Path, trace: list[tuple[float, float]] | None = None) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one console-script process; raises if it fails.

    With `trace`, (seconds, RSS MiB) samples are appended every 0.5 s while it runs.
    """
    started = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.DEVNULL, stderr=err)
        while True:  # os.wait4 (not Popen.poll/wait) reaps the child: it alone returns its resource usage
            pid, status, usage = os.wait4(proc.pid, 0 if trace is None else os.WNOHANG)
            if pid:
                break
            try:
                lines = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                rss_kib = int(next(line for line in lines if line.startswith("VmRSS:")).split()[1])
                trace.append((time.perf_counter() - started, rss_kib / 1024))
            except (OSError, StopIteration, ValueError):
                pass  # exiting
            time.sleep(0.5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed (exit {proc.returncode}): {log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def image_folder(source: Path, target: Path, count: int) -> Path:
    """`count` images in the class folders of `source`, copied round-robin (class by class, in turn)."""
    if target.is_dir() and sum(1 for _ in target.rglob("*.png")) == count:
        return target
    shutil.rmtree(target, ignore_errors=True)
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    files = {c.name: sorted(c.glob("*.png")) for c in classes}
    cycles = {name: itertools.cycle(paths) for name, paths in files.items()}
    for c in classes:
        (target / c.name).mkdir(parents=True)
    for i, name in zip(range(count), itertools.cycle(sorted(files))):
        shutil.copyfile(next(cycles[name]), target / name / f"{i:06d}.png")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="validation folder sizes (images)")
    parser.add_argument("--work", type=Path, help="folder for the data (kept between runs); default: a temporary one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command per size")
    parser.add_argument("--trace", action="store_true", help="also sample the RSS of one validate over time")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 40 and 80 images, one run of each command")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = "40,80", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="resnet-deploy-memory-"))
    work.mkdir(parents=True, exist_ok=True)

    from resnet_deploy.examples import digits

    if not (work / "digits" / "weights.pth").is_file():
        print(f"training the digits model in {work / 'digits'} ...", file=sys.stderr)
        digits.make_workload(work / "digits")
    weights, val = work / "digits" / "weights.pth", work / "digits" / "val"
    common = ["--arch", digits.ARCH, "--weights", str(weights), "--input-size", "3x32x32", "--threads", str(args.threads)]

    results: dict[tuple[str, int], list[float]] = {}
    for size in sizes:
        folder = image_folder(val, work / f"val-{size}", size)
        out = work / f"out-{size}"
        commands = {
            "build": ["build", *common, "--val-data", str(folder), "--out", str(out), "--force", "--quiet",
                      "--batch-sizes", "1", "--warmup", "2", "--iterations", "10"],
            "validate": ["validate", *common, "--onnx", str(work / f"out-{sizes[0]}" / "model.fp32.onnx"),
                         "--val-data", str(folder), "--quiet"],
        }  # fmt: skip
        for repeat in range(args.repeat):
            for name, command in commands.items():
                peak, seconds = run(command, work / f"{name}-{size}.log")
                results.setdefault((name, size), []).append(peak)
                print(f"{size} images, {name} #{repeat + 1}: peak {peak:.0f} MiB ({seconds:.0f} s)", file=sys.stderr)

    print(f"peak RSS in MiB, median of {args.repeat} runs (min..max)\n")
    print("| validation images | build | validate |")
    print("|---:|---:|---:|")
    for size in sizes:
        cells = []
        for name in ("build", "validate"):
            runs = sorted(results[(name, size)])
            cells.append(f"{statistics.median(runs):.0f} ({runs[0]:.0f}..{runs[-1]:.0f})")
        print(f"| {size} | {' | '.join(cells)} |")
    growth = {name: statistics.median(results[(name, sizes[-1])]) - statistics.median(results[(name, sizes[0])])
              for name in ("build", "validate")}  # fmt: skip
    print(f"\n{sizes[-1] // sizes[0]}x the images: median peak {growth['build']:+.0f} MiB (build), "
          f"{growth['validate']:+.0f} MiB (validate)")  # fmt: skip

    if args.trace:
        samples: list[tuple[float, float]] = []
        run(commands["validate"], work / "validate-trace.log", samples)
        print(f"\nresident memory of one validate of {sizes[-1]} images, sampled every 0.5 s:")
        step = max(1, len(samples) // 20)
        print("  " + ", ".join(f"{t:.0f}s {rss:.0f}" for t, rss in samples[::step]) + " (MiB)")


if __name__ == "__main__":
    main()
