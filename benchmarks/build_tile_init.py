#!/usr/bin/env python
"""Train nfit's tile initialisations: the image one it ships (nfit/inits/image_tiles.safetensors), and an audio one.

    PYTHONPATH=. python benchmarks/build_tile_init.py --run runs/tiles-image           # train (resumable)
    PYTHONPATH=. python benchmarks/build_tile_init.py --run runs/tiles-image --finish  # write the shipped file
    PYTHONPATH=. python benchmarks/build_tile_init.py --modality audio --run runs/tiles-audio [--finish]

Images: every photo of ``dev/photos`` but the 24 KPhotoAlbum snapshots (held out: the benchmark
photos of bench_tiles.py), and every photo of ``dev/images``: 183 files of 300 to 1411 px. Audio:
every clip of ``dev/audio_speech`` and ``dev/audio_music`` but the first 40 and 10 by name (held
out: the recordings of ``bench_tiles.py audio-curves``), at their own rates (22.05 and 44.1 kHz),
mixed down to mono. The files are linked into ``RUN.data/``. Training: ``nfit meta-train --tile``
(GradNCP, reference inner-loop settings, outer Adam ``--lr``, batch 16 random tiles cut at the
files' own scale) for ``--steps``; the command is printed and run as a user would. ``--finish``
copies RUN's result with a ``data`` entry that describes this recipe and names the held-out files
(the temporary folder it names means nothing later). The audio one lost to random windows
(``bench_tiles.py audio-curves``, BENCHMARKS.md) and is not shipped.
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
RECIPES = {  # modality -> (tile, extra meta-train options, description of the data)
    "image": (32, [], "dev/photos (but kphotoalbum_*) + dev/images"),
    # audio: half the inner step sizes and a third of the outer one; at the image recipe's, the outer
    # gradient norm reached 1e10 and validation fell below the random init's by step 1,000 (BENCHMARKS.md)
    "audio": (1024, ["--channels", "1", "--inner-lr", "5e-3", "--boot-lr", "2.5e-2"],
              "dev/audio_speech (but the first 40) + dev/audio_music (but the first 10), mono, at their own rates"),
}


def held_out_and_training(modality: str) -> tuple[list[Path], list[Path]]:
    """The files kept for the benchmarks, and the training files."""
    if modality == "image":
        photos = sorted((DATA / "photos").glob("*.jpg"))
        held = [p for p in photos if p.name.startswith("kphotoalbum_")]
        return held, [p for p in photos if p not in held] + sorted((DATA / "images").iterdir())
    speech, music = sorted((DATA / "audio_speech").iterdir()), sorted((DATA / "audio_music").iterdir())
    return speech[:40] + music[:10], speech[40:] + music[10:]


def link_data(folder: Path, modality: str) -> list[str]:
    """The training folder (links to the files); returns the names of the held-out ones."""
    folder.mkdir(parents=True, exist_ok=True)
    held_out, training = held_out_and_training(modality)
    for path in training:
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    return [p.name for p in held_out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modality", choices=sorted(RECIPES), default="image")
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--finish", action="store_true", help="write the shipped file from RUN's result")
    ap.add_argument("--out", type=Path, help="default: nfit/inits/MODALITY_tiles.safetensors")
    args = ap.parse_args()
    tile, extra, described = RECIPES[args.modality]
    data = args.run.with_name(args.run.name + ".data")
    held_out = link_data(data, args.modality)
    command = [sys.executable, "-m", "nfit", "meta-train", str(data), "--tile", str(tile), "-o", str(args.run),
               "--steps", str(args.steps), "--batch-size", "16", "--lr", f"{args.lr:g}", "--val-limit", "18",
               "--val-every", "250", *extra]
    if not args.finish:
        if args.run.exists():  # carry on where it stopped
            command = command[:3] + ["--resume", str(args.run), "--steps", str(args.steps)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)
        return
    out = args.out or ROOT / "nfit" / "inits" / f"{args.modality}_tiles.safetensors"
    init = load_init(args.run)
    init.data = {**init.data, "root": described, "recipe": "benchmarks/build_tile_init.py: " + " ".join(["nfit"] + command[3:]),
                 "held_out": held_out}
    sha = save_init(init, out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, sha256 {sha[:16]}..., step {init.train['steps']})")


if __name__ == "__main__":
    main()
