#!/usr/bin/env python
"""Folder fitting at scale: peak memory and time of `nfit fit DIR -O OUT` against folder size.

Makes folders of N small photo crops (``--size`` px square, cut from the images in
``--data``, PNG), then for each N runs the real command in a fresh subprocess with a
tiny field and few steps (the point is the bookkeeping around the fits, not the
fits) and records the child's own peak resident set (VmHWM, see nfit.device) and
wall time. Streaming means the peak should not grow with N.

Usage (from the repository root):

    python benchmarks/bench_folder.py                       # N = 100 and 1000, 3 repeats, 128x128 crops
    python benchmarks/bench_folder.py --counts 100 1000 --repeats 3 --json /tmp/bench_folder.json
    python benchmarks/bench_folder.py --pythonpath /tmp/old --list-files  # another checkout (before folder inputs)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "dev" / "images"

# The child: run the CLI in-process, then report its own peak resident set on the last stderr line.
CHILD = """
import sys
from nfit.cli import app
from nfit.device import peak_resident_bytes
try:
    app(args=sys.argv[1:], prog_name="nfit", standalone_mode=False)
finally:
    print("VmHWM", peak_resident_bytes(), file=sys.stderr)
"""


def make_folder(folder: Path, count: int, size: int, data: Path) -> None:
    """``count`` distinct size x size RGB crops, cycling over the photos and crop positions."""
    import numpy as np
    from PIL import Image

    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(data.iterdir())
              if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    folder.mkdir(parents=True)
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        k = i // len(photos)
        y, x = (k * 37) % (h - size), (k * 53) % (w - size)
        Image.fromarray(np.ascontiguousarray(img[y : y + size, x : x + size])).save(folder / f"crop_{i:05d}.png")


def run_once(folder: Path, out: Path, args: argparse.Namespace) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": args.pythonpath or str(REPO)}
    inputs = sorted(map(str, folder.iterdir())) if args.list_files else [str(folder)]
    cmd = [sys.executable, "-c", CHILD, "fit", *inputs, "-O", str(out), "--steps", str(args.steps),
           "--width", str(args.width), "--depth", str(args.depth), "--batch-size", str(args.batch_size),
           "--device", "cpu", "--json"]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"child failed ({r.returncode}):\n{r.stderr[-2000:]}")
    peak = int(r.stderr.strip().splitlines()[-1].split()[1])
    written = len(list(out.rglob("*.nf")))
    return {"seconds": seconds, "peak_rss": peak, "written": written}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="side of each crop in pixels (big enough that holding every file would show)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--pythonpath", help="import nfit from here instead of this checkout")
    ap.add_argument("--list-files", action="store_true", help="pass every file on the command line, not the folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            folder = Path(tmp) / f"in_{count}"
            make_folder(folder, count, args.size, args.data)
            runs = [run_once(folder, Path(tmp) / "out", args) for _ in range(args.repeats)]
            assert all(r["written"] == count for r in runs), runs
            row = {"files": count, "peak_rss_mb": round(statistics.median(r["peak_rss"] for r in runs) / 2**20, 1),
                   "seconds": round(statistics.median(r["seconds"] for r in runs), 2),
                   "ms_per_file": round(1000 * statistics.median(r["seconds"] for r in runs) / count, 2),
                   "runs": runs}
            results.append(row)
            print(f"{count:6d} files: peak RSS {row['peak_rss_mb']:7.1f} MB, {row['seconds']:7.2f} s "
                  f"({row['ms_per_file']:.1f} ms/file), median of {args.repeats}", flush=True)
    report = {"machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "command": " ".join(sys.argv), "settings": {k: v for k, v in vars(args).items() if k != "json"} | {
                  "data": str(args.data), "json": None}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
