#!/usr/bin/env python
"""How soon ``nfit meta-train`` starts training on an ImageNet-shaped folder of real images.

Makes a tree like ImageNet's: ``--folders`` class folders holding ``--files`` images in all, each a
random crop of a photo from ``--photos`` (short side 64-160 px: small, so that the tree is quick
to write; start-up reads few of them) in ImageNet's mix of kinds: baseline JPEG mostly, some
progressive, CMYK and greyscale JPEGs, 16-bit and RGBA PNGs, and broken files (a truncated JPEG
and an empty one). Then runs ``nfit meta-train TREE --steps 2`` in a fresh process and times,
from its launch, the first logged training step (everything before it is start-up: listing,
the file index, the channel guess, the validation split, the first batches' decoding) and the
end; and ``--resume`` of that run to step 3 (which reads the run's file index instead of
listing). Peak memory is the process's own (VmHWM).

    python benchmarks/bench_start.py --json benchmarks/results/start.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import png
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KINDS = (("jpeg", 0.90), ("progressive", 0.04), ("cmyk", 0.02), ("grey", 0.02), ("png16", 0.01), ("rgba", 0.01))


def encode(kind: str, img: Image.Image) -> tuple[str, bytes]:
    """One image in one of KINDS: (file extension, bytes)."""
    out = io.BytesIO()
    if kind == "png16":  # 16-bit RGB: Pillow writes only 16-bit grey, pypng writes any
        rows = (np.asarray(img, dtype=np.uint16) * 257).reshape(img.height, -1)
        png.Writer(img.width, img.height, bitdepth=16, greyscale=False).write(out, rows.tolist())
        return ".png", out.getvalue()
    if kind == "rgba":
        img.convert("RGBA").save(out, "PNG")
        return ".png", out.getvalue()
    converted = {"cmyk": "CMYK", "grey": "L"}.get(kind, "RGB")
    img.convert(converted).save(out, "JPEG", quality=90, progressive=kind == "progressive")
    return ".JPEG", out.getvalue()


def make_tree(root: Path, files: int, folders: int, photos: list[Path], seed: int) -> dict[str, int]:
    draw = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in photos]
    names, weights = zip(*KINDS)
    counts: dict[str, int] = {}
    per = -(-files // folders)
    for c in range(folders):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(min(per, files - c * per)):
            src = draw.choice(sources)
            side = draw.randint(64, 160)
            w, h = (side * draw.choice((4, 5, 3)) // 3, side) if draw.random() < 0.7 else (side, side * 4 // 3)
            box_w, box_h = min(src.width, 2 * w), min(src.height, 2 * h)
            x, y = draw.randint(0, src.width - box_w), draw.randint(0, src.height - box_h)
            kind = draw.choices(names, weights)[0]
            ext, data = encode(kind, src.crop((x, y, x + box_w, y + box_h)).resize((w, h), Image.BILINEAR))
            (folder / f"n{c:08d}_{i:06d}{ext}").write_bytes(data)
            counts[kind] = counts.get(kind, 0) + 1
    broken = root / f"n{folders // 2:08d}"
    good = sorted(broken.glob("*.JPEG"))[0].read_bytes()
    (broken / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (broken / "empty.JPEG").write_bytes(b"")
    counts["broken"] = 2
    return counts


def timed_run(cmd: list[str], run: Path, first_step: int) -> dict[str, float]:
    """Launch ``cmd``; seconds to the first logged training step >= ``first_step``, to the end, and peak RSS."""
    began = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, first, peak = run / "metrics.jsonl", None, 0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm(proc.pid))
        if first is None and metrics.exists():
            steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if '"train"' in x]
            if steps and max(steps) >= first_step:
                first = time.monotonic() - began
        time.sleep(0.02)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err}")
    return {"first_step_s": round(first if first is not None else time.monotonic() - began, 1),
            "end_s": round(time.monotonic() - began, 1), "peak_rss_mb": round(peak / 2**20), "messages": err.strip()}


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--folders", type=int, default=1000)
    ap.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "datasets" / "dev" / "photos")
    ap.add_argument("--tree", type=Path, help="keep the tree here (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.tree or Path(tmp) / "tree"
        began = time.monotonic()
        counts = make_tree(root, args.files, args.folders, sorted(args.photos.glob("*.jpg"))[:20], args.seed)
        made = time.monotonic() - began
        run = Path(tmp) / "run"
        train = [sys.executable, "-m", "nfit", "meta-train", str(root), "-o", str(run), "--steps", "2", "--res", "32",
                 "--width", "64", "--depth", "3", "--batch-size", "8", "--log-every", "1", "--val-limit", "8",
                 "--device", "cpu"]
        start = timed_run(train, run, 1)
        resume = timed_run([sys.executable, "-m", "nfit", "meta-train", "--resume", str(run), "--steps", "3"], run, 3)
    result = {"files": args.files + 2, "folders": args.folders, "kinds": counts, "tree_seconds": round(made),
              "start": start, "resume": resume, "command": " ".join(train[1:]).replace(str(root), "TREE").replace(str(run), "RUN"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
