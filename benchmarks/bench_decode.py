#!/usr/bin/env python
"""Decoding throughput of one data-loading worker: images per second for meta-training at a
resolution (whole images conformed to RES x RES) and for tiles (``meta-train --tile``), and how
many workers keep a GPU's outer steps fed.

One process, one thread (a DataLoader worker's), warm page cache. Two sets of JPEGs: the photos
of ``--photos`` as they are (up to 1024 px), and the same photos re-encoded at ImageNet's size
(longer side 500, quality 90, in a temporary folder). For each, ``nfit.data.load_image`` at
``--res`` with and without JPEG draft decoding (libjpeg's reduced-scale decode, see
``nfit.signals.image.read_image``), and the PSNR between the two results. Tiles: one random
``--tile`` tile per item from ``nfit.data.TileFolder``, first pass (each file decoded) and later
passes (files from the worker's cache).

    python benchmarks/bench_decode.py --json benchmarks/results/decode.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfit.data import TileFolder, load_image  # noqa: E402
from nfit.metrics import psnr_from_mse  # noqa: E402
from nfit.config import SignalOptions  # noqa: E402


def rate(work, items: int, repeats: int) -> tuple[float, list[float]]:
    """Median items per second of ``work()`` over ``repeats`` runs (after one warm-up run)."""
    work()
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        rates.append(items / (time.perf_counter() - began))
    return statistics.median(rates), rates


def imagenet_sized(photos: list[Path], folder: Path) -> list[Path]:
    out = []
    for p in photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale = 500 / max(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
            out.append(folder / (p.stem + ".JPEG"))
            im.save(out[-1], "JPEG", quality=90)
    return out


def whole_images(files: list[Path], res: int, repeats: int) -> dict:
    result = {}
    for name, draft in (("full", False), ("draft", True)):
        median, rates = rate(lambda d=draft: [load_image(p, res, 3, draft=d) for p in files], len(files), repeats)
        result[name] = {"images_per_s": round(median, 1), "runs": [round(r, 1) for r in rates]}
    mse = torch.stack([(load_image(p, res, 3, draft=True) - load_image(p, res, 3, draft=False)).pow(2).mean()
                       for p in files])
    result["draft_speedup"] = round(result["draft"]["images_per_s"] / result["full"]["images_per_s"], 2)
    result["draft_vs_full_psnr_db"] = {"median": round(float(psnr_from_mse(mse).median()), 1),
                                       "min": round(float(psnr_from_mse(mse).min()), 1)}
    return result


def tiles(files: list[Path], tile: int, repeats: int) -> dict:
    def one_pass(dataset: TileFolder, draw: int) -> None:
        for i in range(len(files)):
            dataset[(i, draw + i)]

    began = time.perf_counter()
    dataset = TileFolder(files, SignalOptions(modality="image"), 3, (tile, tile))
    one_pass(dataset, 0)  # every file decoded once
    first = len(files) / (time.perf_counter() - began)
    median, rates = rate(lambda: one_pass(dataset, 10_000), len(files), repeats)
    return {"first_pass_tiles_per_s": round(first, 1), "cached_tiles_per_s": round(median, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "datasets" / "dev" / "photos")
    ap.add_argument("--limit", type=int, default=60, help="photos used (the first by name)")
    ap.add_argument("--res", type=int, default=178)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-steps-per-s", type=float, default=2.6, help="outer steps a GPU makes per second")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    photos = sorted(args.photos.glob("*.jpg"))[: args.limit]
    sizes = [Image.open(p).size for p in photos]
    needed = args.gpu_steps_per_s * args.batch
    with tempfile.TemporaryDirectory() as tmp:
        small = imagenet_sized(photos, Path(tmp))
        sets = {"imagenet_sized": small, "photos": photos}
        result = {
            "photos": len(photos), "median_pixels": {"photos": statistics.median(w * h for w, h in sizes),
                                                     "imagenet_sized": statistics.median(
                                                         Image.open(p).size[0] * Image.open(p).size[1] for p in small)},
            "res": args.res, "images_needed_per_s": needed,
            "whole": {name: whole_images(files, args.res, args.repeats) for name, files in sets.items()},
            "tiles": {name: tiles(files, args.tile, args.repeats) for name, files in sets.items()},
        }
    for name, r in result["whole"].items():
        r["workers_needed"] = {k: math.ceil(needed / r[k]["images_per_s"]) for k in ("full", "draft")}
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    result["date"] = time.strftime("%Y-%m-%d")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
