#!/usr/bin/env python
"""Train the image tile initialisation that ships with nfit (nfit/inits/image_tiles.safetensors).

    PYTHONPATH=. python benchmarks/build_tile_init.py --run runs/tiles-image          # train (resumable)
    PYTHONPATH=. python benchmarks/build_tile_init.py --run runs/tiles-image --finish  # write the shipped file

Data: every photo of ``dev/photos`` but the 24 KPhotoAlbum snapshots (held out: the
benchmark photos of bench_tiles.py), and every photo of ``dev/images``: 183 files of
300 to 1411 px, linked into ``RUN.data/``. Training: ``nfit meta-train --tile 32`` (GradNCP,
reference inner-loop settings, outer Adam ``--lr``, batch 16 random tiles cut at the
files' own scale) for ``--steps``; the command is printed and run as a user would.
``--finish`` copies RUN's result with a ``data`` entry that describes this recipe and
names the held-out photos (the temporary folder it names means nothing later).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfit.fieldfile import save_init  # noqa: E402
from nfit.runs import load_init  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "dev"
HELD_OUT = "kphotoalbum_*"


def link_data(folder: Path) -> list[str]:
    """The training folder (links to the photos); returns the names of the held-out ones."""
    folder.mkdir(parents=True, exist_ok=True)
    held_out = sorted(p.name for p in (DATA / "photos").glob(HELD_OUT))
    for path in sorted((DATA / "photos").glob("*.jpg")) + sorted((DATA / "images").iterdir()):
        if path.name not in held_out and not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    return held_out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--finish", action="store_true", help="write the shipped file from RUN's result")
    ap.add_argument("--out", type=Path, default=ROOT / "nfit" / "inits" / "image_tiles.safetensors")
    args = ap.parse_args()
    data = args.run.with_name(args.run.name + ".data")
    held_out = link_data(data)
    command = [sys.executable, "-m", "nfit", "meta-train", str(data), "--tile", str(args.tile), "-o", str(args.run),
               "--steps", str(args.steps), "--batch-size", "16", "--lr", f"{args.lr:g}", "--val-limit", "18",
               "--val-every", "250"]
    if not args.finish:
        if args.run.exists():  # carry on where it stopped
            command = command[:3] + ["--resume", str(args.run), "--steps", str(args.steps)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        return
    init = load_init(args.run)
    init.data = {**init.data, "root": "dev/photos (but " + HELD_OUT + ") + dev/images",
                 "recipe": "benchmarks/build_tile_init.py: " + " ".join(["nfit"] + command[3:]),
                 "held_out": held_out}
    sha = save_init(init, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes, sha256 {sha[:16]}..., step {init.train['steps']})")


if __name__ == "__main__":
    main()
