"""Streamed image data (issue 19, item 4): mpt against torchvision's ImageFolder + DataLoader.

It makes, in a scratch folder (removed at the end unless --keep), an ImageFolder tree of
--images (default 20,000) small JPEGs: 10 class folders of 64x64 pictures (a smooth
random pattern, tinted by the class, lightly noisy; ~2 KB each). Then, in this one
process, each repetition runs every variant once, in a rotating order (drift on a shared
machine hits each alike), --epochs epochs each, the same tiny model and optimizer (an MLP
3*S*S-128-10, SGD 0.01/0.9, batch --batch), no validation:

- dataloader: torchvision's `ImageFolder` with Resize((S, S), bicubic: PIL's default, as
              mpt resizes) + ToTensor + Normalize, a `DataLoader(shuffle=True,
              num_workers=W, persistent_workers=True)`, and the hand-written training loop
              (mpt decodes a JPEG larger than S at 1/2..1/8 scale first, PIL's draft mode:
              here 64 -> 32 in the decoder, nothing left to resize);
- stream:     mpt through Run.start, data.dataset "image_folder", data.cache "stream",
              data.num_workers W (its DataLoader workers decode the files every epoch);
- memory:     the same, data.cache "memory": the folder decoded once up front (it fits),
              batches sliced from the uint8 copy and normalised per batch;
- auto:       the same, data.cache "auto" (the default): decoded once too, and on the
              CPU placed as "device", i.e. normalised once, batches sliced from float32.

Figures: samples per second of epochs 2.. (the first starts the workers, or pays for the
decoding), median over epochs and repetitions with their spread, and the issue's targets:
stream >= 1.0x the DataLoader loop, the decode-once cache (memory and auto each) >= 3x.

    python bench/stream.py                  # 20,000 images, 3 epochs x 3 repetitions
    python bench/stream.py --quick          # 2,000 images, 3 epochs x 2 repetitions
    python bench/stream.py --images 5000 --workers 4 --keep /tmp/imgs
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import in_fresh_thread, run_to_end  # noqa: E402

CLASSES, PIXELS = 10, 64
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # given to both: no estimate from a sample
VARIANTS = ["dataloader", "stream", "memory", "auto"]
TARGETS = {"stream": 1.0, "memory": 3.0, "auto": 3.0}  # x the DataLoader loop's samples/s


def make_folder(root: Path, images: int, seed: int = 0) -> Path:
    """`images` 64x64 JPEGs in CLASSES class folders, each class its own tint."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tints = rng.integers(40, 216, size=(CLASSES, 3))
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(images):
        c = i % CLASSES
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # smooth once upscaled
        picture = np.asarray(Image.fromarray(coarse).resize((PIXELS, PIXELS), Image.BILINEAR))
        noise = rng.integers(-12, 13, size=picture.shape)
        pixels = np.clip(picture // 2 + tints[c] // 2 + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{c}" / f"{i:06d}.jpg", quality=90)
    return root


def build_mlp(size: int) -> torch.nn.Module:
    from engine.models import build_model
    from engine.profile import ModelSection

    return build_model(ModelSection(arch="mlp", hidden=[128]), (3, size, size), CLASSES)


def run_dataloader(root: Path, epochs: int, size: int, batch: int, workers: int, seed: int):
    """torchvision's way: ImageFolder + per-sample transforms + DataLoader; seconds per epoch."""
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(str(root), transform=tf),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)
    model = build_mlp(size)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        loss.item()  # the epoch's one sync
        times.append(time.perf_counter() - start)
    return times


def run_mpt(root: Path, epochs: int, size: int, batch: int, workers: int, seed: int, cache: str):
    """mpt through Run.start on the folder with data.cache `cache`; seconds per epoch
    (each epoch_end's own `seconds`: the epoch's steps, there being no validation)."""
    from engine.profile import profile_from_dict

    profile = profile_from_dict(
        {
            "run": {"name": "bench-stream", "epochs": epochs, "device": "cpu", "seed": seed},
            "data": {
                "dataset": "image_folder",
                "path": str(root),
                "image_size": size,
                "batch_size": batch,
                "cache": cache,
                "num_workers": workers,
                "val_fraction": 0.0,
                "mean": MEAN,
                "std": STD,
            },
            "model": {"arch": "mlp", "hidden": [128]},
            "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "train": {"log_every": 50},
            "checkpoint": {"every_epochs": 0, "save_best": False},
        }
    )
    events = run_to_end(profile, f"mpt (data.cache {cache})")
    return [e.seconds for e in events if e.kind == "epoch_end"]


def measure(root: Path, args) -> dict[str, list[list[float]]]:
    """Samples/s of epochs 2.. of each variant, per repetition, interleaved."""
    variants = args.variants
    per: dict[str, list[list[float]]] = {v: [] for v in variants}
    common = (root, args.epochs, args.size, args.batch, args.workers)
    for rep in range(args.reps):
        turn = rep % len(variants)
        order = variants[turn:] + variants[:turn]  # rotated: no variant always first
        for v in order:
            if v == "dataloader":
                times = in_fresh_thread(run_dataloader, *common, seed=rep)
            else:
                times = in_fresh_thread(run_mpt, *common, seed=rep, cache=v)
            rates = [args.images / t for t in times[1:]]
            per[v].append(rates)
            print(f"  rep {rep} {v:<11}" + "".join(f"{r:>9.0f}" for r in rates) + " samples/s")
    return per


def report(per: dict[str, list[list[float]]]) -> None:
    """Medians over every counted epoch; beside each target the ratio of each repetition
    (its variants ran minutes apart, so drift on a shared machine shows as their spread)."""
    flat = {v: [r for rep in reps for r in rep] for v, reps in per.items()}
    med = {v: statistics.median(rates) for v, rates in flat.items()}
    print("\nsamples/s, epochs 2.. of every repetition: median (min - max)")
    for v, rates in flat.items():
        print(f"  {v:<11}{med[v]:>9.0f}  ({min(rates):.0f} - {max(rates):.0f})")
    print("  targets (x the DataLoader loop's samples/s; then each repetition's):")
    for v, target in TARGETS.items():
        if v not in per or "dataloader" not in per:
            continue
        ratio = med[v] / med["dataloader"]
        reps = zip(per[v], per["dataloader"], strict=True)
        each = ", ".join(f"{statistics.median(a) / statistics.median(b):.2f}" for a, b in reps)
        mark = "met " if ratio >= target else "MISS"
        print(f"    {mark}  mpt {v:<7} >= {target:.1f}x{ratio:>8.2f}   ({each})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=32, help="data.image_size (both sides)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="num_workers (both sides)")
    ap.add_argument(
        "--variants", nargs="+", default=VARIANTS, choices=VARIANTS, help="which to run"
    )
    ap.add_argument("--quick", action="store_true", help="2,000 images, 2 repetitions")
    ap.add_argument("--keep", metavar="DIR", help="make the folder here and keep it")
    ap.add_argument("--folder", metavar="DIR", help="use this folder (made by --keep)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.reps = 2_000, 2
    scratch = None
    if args.folder:
        root = Path(args.folder)
        args.images = sum(1 for _ in root.glob("*/*.jpg"))
    else:
        if args.keep:
            root = Path(args.keep)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="mpt-stream-"))
            root = scratch / "images"
        start = time.perf_counter()
        make_folder(root, args.images)
        print(f"made {args.images} JPEGs in {root} ({time.perf_counter() - start:.1f} s)")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images "
        f"{PIXELS}x{PIXELS} -> {args.size}x{args.size}, batch {args.batch}, "
        f"num_workers {args.workers}, {args.epochs} epochs x {args.reps} repetitions"
    )
    try:
        report(measure(root, args))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
