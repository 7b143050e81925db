#!/usr/bin/env python
"""How long listing a folder of N files takes, and the memory each listed file holds.

``nfit meta-train`` lists its data folder (recursively, sorted) before the first
step. This makes a tree like ImageNet's (class folders of JPEG names; the files are
empty: listing never opens them) and times :func:`nfit.data.scan_media` on it: the
median of ``--repeats`` runs, then one run under tracemalloc for the bytes of Python
heap held per listed file. It prints the extrapolation to ImageNet's 1.28 M files.

    python benchmarks/bench_scan.py                      # 10^5 files in 1000 folders
    python benchmarks/bench_scan.py --files 300000 --json /tmp/scan.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nfit.data import scan_media  # noqa: E402

IMAGENET_FILES = 1_281_167


def make_tree(root: Path, files: int, folders: int) -> None:
    per = -(-files // folders)
    for c in range(folders):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(min(per, files - c * per)):
            (d / f"n{c:08d}_{i:06d}.JPEG").touch()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        make_tree(root, args.files, args.folders)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            _, files = scan_media(root)
            times.append(time.perf_counter() - t)
        tracemalloc.start()
        _, files = scan_media(root)
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    median = statistics.median(times)
    scale = IMAGENET_FILES / len(files)
    result = {"files": len(files), "folders": args.folders, "seconds_median": round(median, 3),
              "seconds_all": [round(t, 3) for t in times], "held_bytes_per_file": round(held / len(files)),
              "peak_bytes_per_file": round(peak / len(files)),
              "imagenet_seconds_linear": round(median * scale, 1), "imagenet_held_mb": round(held * scale / 2**20),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
