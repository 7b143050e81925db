#!/usr/bin/env python
"""Train the image initialisation that ships with nfit (nfit/inits/image.safetensors).

    PYTHONPATH=. python benchmarks/build_default_init.py --data ../shared/datasets/dev/images \\
        --res 32 --crops 2000 --steps 300 --out nfit/inits/image.safetensors

The photos are split as in ``bench_meta.py crops`` (seed 0: a quarter held out, never
seen in training, for ``bench_default_init.py``). Training data: random square crops
of the other photos at several scales (side 1x to 4x ``--res`` of the photo at
shorter side 512), resized to ``--res``. Meta-training: ``nfit meta-train --algo
gradncp`` with the reference hyperparameters. The file's ``data`` entry is replaced
by a description of this recipe (the temporary folder it names means nothing later).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_meta import make_crops  # noqa: E402

from nfit.config import DataConfig, TrainConfig  # noqa: E402
from nfit.data import scan_folder  # noqa: E402
from nfit.fieldfile import save_init  # noqa: E402
from nfit.runs import load_init  # noqa: E402
from nfit.train import meta_train  # noqa: E402


def split_photos(data: Path, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos): the split of ``bench_meta.py crops``."""
    photos = scan_folder(data)
    rng = random.Random(seed)
    test = sorted(rng.sample(photos, max(1, len(photos) // 4)))
    return [p for p in photos if p not in test], test


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "dev" / "images"))
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--crops", type=int, default=2000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--run", help="keep the run directory here (default: a temporary one)")
    p.add_argument("--finish", help="only write --out from this existing run (e.g. one stopped early with Ctrl-C)")
    p.add_argument("--out", default=str(ROOT / "nfit" / "inits" / "image.safetensors"))
    args = p.parse_args()
    train_photos, test_photos = split_photos(Path(args.data), args.seed)
    if args.finish:
        write(load_init(args.finish), args, train_photos, test_photos)
        return
    with tempfile.TemporaryDirectory() as tmp:
        crops = Path(tmp) / "crops"
        make_crops(train_photos, args.crops, args.res, crops, args.seed)
        run = Path(args.run) if args.run else Path(tmp) / "run"
        cfg = TrainConfig(algo="gradncp", steps=args.steps, lr=args.lr, seed=args.seed, val_every=max(1, args.steps // 5),
                          ckpt_every=max(1, args.steps // 5), device=args.device)

        def show(event):
            if event.kind in ("val", "start") or (event.kind == "step" and event.step % 50 == 0):
                print(event.kind, event.step, {k: v for k, v in event.values.items() if k != "data"}, flush=True)

        result = meta_train(crops, run, cfg, DataConfig(res=args.res, val_fraction=0.05, workers=0), on_event=show)
        write(load_init(result.init), args, train_photos, test_photos)


def write(init, args, train_photos: list[Path], test_photos: list[Path]) -> None:
    """The init file as shipped: its ``data`` entry describes the recipe, not a temporary folder."""
    init.data = {
        "recipe": "benchmarks/build_default_init.py",
        "photos": [f.name for f in train_photos],
        "held_out": [f.name for f in test_photos],
        "crops": args.crops,
        "scales": f"square crops of side {args.res} to {4 * args.res} px of each photo at shorter side 512, resized to {args.res}",
        "source": "../shared/datasets/dev/images (scikit-image, SciPy and OpenCV sample photos)",
        "res": args.res,
        "channels": init.channels,
    }
    sha = save_init(init, args.out)
    print(f"wrote {args.out} (sha256 {sha}, validation PSNR {init.train.get('val_psnr')})")


if __name__ == "__main__":
    main()
