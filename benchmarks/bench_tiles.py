#!/usr/bin/env python
"""Tiled fields on real files: quality against wall time, seams, and memory at scale.

    PYTHONPATH=. python benchmarks/bench_tiles.py curves --init nfit/inits/image_tiles.safetensors
    PYTHONPATH=. python benchmarks/bench_tiles.py cli        # `nfit fit photo.png` as it ships, 768x512
    PYTHONPATH=. python benchmarks/bench_tiles.py big        # a 50-megapixel photo: fit and render memory
    PYTHONPATH=. python benchmarks/bench_tiles.py audio      # a 10-minute recording: memory, 48 kHz, clicks
    PYTHONPATH=. python benchmarks/bench_tiles.py audio-curves --audio-init runs/tiles-audio  # see build_tile_init.py
    PYTHONPATH=. python benchmarks/bench_tiles.py plot --json-in benchmarks/results/tiles_curves.json

Photos are the held-out ones (``--pattern``, default the 24 KPhotoAlbum snapshots of
``dev/photos``, which no shipped initialisation was trained on), at their own size
(800x533 to 800x600) unless said otherwise.

``curves``: for each photo, PSNR against wall time and steps of (a) one SIREN 5x256
for the whole photo (nfit's whole-signal default, Adam 1e-3, ``--whole-seconds`` of
it), (b) random-init tiles with Adam (nfit fit's default), (c) tiles from a tile
initialisation (16 re-scaled SGD steps, then Adam). The PSNR of (b) and (c) is that of
the tiles' mean MSE (the whole photo's, overlaps counted twice); the stored summary of
each fit gives the exact whole-photo PSNR of its render. Then: the PSNR (c) reaches in
16 steps, and the first step at which (b) reaches it (the ratio of steps); and the
seam measure (nfit.tiling.seam_ratio) of a 2x render of each (b) fit, beside a Lanczos
2x upscale of the photo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nfit  # noqa: E402
from nfit.api import fit_signals  # noqa: E402
from nfit.config import TILE_WARMUP, AdaptConfig, FieldOptions, FitConfig, TileConfig  # noqa: E402
from nfit.runs import load_init  # noqa: E402
from nfit.signals import read_signal  # noqa: E402
from nfit.tiling import seam_ratio  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "dev"


def _machine() -> dict:
    return {"machine": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


class Curve:
    """(seconds since the fit began, PSNR after n steps) from a fit's step callbacks; ``after`` maps the
    callback's step number to the steps taken before the PSNR it reports."""

    def __init__(self):
        self.began = time.perf_counter()
        self.points: dict[int, tuple[float, float]] = {}

    def progress(self, after):
        def factory(label, steps):
            def on_step(info):
                self.points.setdefault(after(info.step), (time.perf_counter() - self.began, info.psnr))
            return on_step
        return factory

    def to_json(self) -> list[list[float]]:
        return [[n, round(t, 3), round(p, 3)] for n, (t, p) in sorted(self.points.items())]


def fit_curve(signal, *, tiles: TileConfig, config: FitConfig, init=None, adapt: AdaptConfig | None = None,
              field: FieldOptions | None = None):
    """One fit of ``signal`` (random tiles: of ``field``) and its PSNR after each step (0 = the start)."""
    curve = Curve()
    sgd = init is not None and (adapt or AdaptConfig()).optimizer == "sgd"
    k = (adapt or AdaptConfig()).steps
    # fit_sgd reports the PSNR after step s; fit_adam (and Adam after SGD, counted on from k) before step s
    after = (lambda s: s if s <= k else s - 1) if sgd else (lambda s: s - 1)
    nf = fit_signals([signal], config, field, progress=curve.progress(after), init=init, adapt=adapt, tiles=tiles)[0]
    return nf, curve


def first_reaching(curve: list[list[float]], psnr: float) -> int | None:
    return next((n for n, _, p in curve if p >= psnr), None)


def _print_summary(row: dict) -> None:
    """One line per measured file as it is done: its row without the per-step curves."""
    print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "curve"})
                      for k, v in row.items()}), flush=True)


def _result(args, **rows) -> dict:
    return {"machine": _machine(), "args": {k: str(v) for k, v in vars(args).items() if k != "func"}, **rows}

def curves(args) -> dict:
    photos = sorted(Path(args.data).glob(args.pattern))[: args.limit]
    init = load_init(args.init) if args.init else None
    reused = {r["photo"]: r for r in json.loads(args.reuse.read_text())["photos"]} if args.reuse else {}
    rows = []
    for path in photos:
        signal = read_signal(path)
        row = {"photo": path.name, "shape": list(signal.shape)}
        if path.name in reused:  # (a) and (b) as measured before: only the initialisation is new
            row.update({k: v for k, v in reused[path.name].items() if k != "init_tiles"})
            row.update(_init_variant(signal, init, row, args))
            rows.append(row)
            print(json.dumps({"photo": path.name, **{k: v for k, v in row["init_tiles"].items() if k != "curve"}}),
                  flush=True)
            continue
        whole, c = fit_curve(signal, tiles=TileConfig(tile=0),
                             config=FitConfig(steps=10_000, seconds=args.whole_seconds, device="cpu"))
        row["whole"] = {"psnr": whole.summary["psnr"], "curve": c.to_json()}
        tiles = TileConfig()
        rand, c = fit_curve(signal, tiles=tiles, config=nfit.api.fit_config("tiled", steps=args.steps, target_psnr=0,
                                                                            device="cpu"))
        rendered = rand.render((2 * signal.shape[0], 2 * signal.shape[1]))
        row["random_tiles"] = {"psnr": rand.summary["psnr"], "curve": c.to_json(), "tiles": rand.tiles,
                               "seam_2x": [round(seam_ratio(rendered, rand.tiling, rand.shape, a), 3) for a in (0, 1)]}
        row["lanczos_2x_seam"] = [round(seam_ratio(_lanczos_2x(path), rand.tiling, rand.shape, a), 3) for a in (0, 1)]
        if init is not None:
            row.update(_init_variant(signal, init, row, args))
        rows.append(row)
        _print_summary(row)
    return _result(args, photos=rows)


def _init_variant(signal, init, row: dict, args) -> dict:
    """(c): tiles from ``init`` (its SGD steps, then Adam), and how many random-init Adam steps reach
    what its first 16 steps reach."""
    adapt = AdaptConfig(steps=init.test.get("steps", 16), lr=init.test.get("lr", 1e-2),
                        gamma=init.test.get("gamma", 0.25), adam_lr=init.test.get("adam_lr", 1e-3), device="cpu")
    config = dataclasses.replace(nfit.api.fit_config("tiled", steps=args.steps - adapt.steps, target_psnr=0, device="cpu"),
                                 warmup=TILE_WARMUP)  # as nfit fit from a tile initialisation
    meta, c = fit_curve(signal, tiles=TileConfig(), config=config, init=init, adapt=adapt)
    at16 = dict((n, p) for n, _, p in c.to_json()).get(adapt.steps)
    reach = first_reaching(row["random_tiles"]["curve"], at16)
    return {"init_tiles": {"psnr": meta.summary["psnr"], "curve": c.to_json(), "psnr_at_16": at16,
                           "random_steps_to_reach": reach, "init_sha256": init.sha256,
                           "step_ratio": None if reach is None else round(reach / adapt.steps, 2)}}


def _lanczos_2x(path: Path) -> torch.Tensor:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    big = image.resize((2 * image.width, 2 * image.height), Image.LANCZOS)
    return torch.from_numpy(np.asarray(big, dtype=np.float32) / 255)


# Runs a command and reports its own peak resident memory: RUSAGE_CHILDREN of a fresh process is that of
# its one child (of this process it would be the largest child so far).
_PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr); sys.exit(r)")


def _run_measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run a command; its wall seconds, its peak resident memory (bytes) and its output."""
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, int(proc.stderr.strip().splitlines()[-1]), proc.stdout


def _nfit(*args: str) -> list[str]:
    return [sys.executable, "-m", "nfit", *args]


def cli(args) -> dict:
    """``nfit fit photo.png -o photo.nf`` with no other option, on 768x512 versions of the photos."""
    from PIL import Image

    photos = sorted(Path(args.data).glob(args.pattern))[: args.limit]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in photos:
            image = Image.open(path).convert("RGB")
            size = (768, 512) if image.width >= image.height else (512, 768)
            src = Path(tmp) / (path.stem + ".png")
            image.resize(size, Image.LANCZOS).save(src)
            seconds, _, out = _run_measured(_nfit("fit", str(src), "-o", str(src.with_suffix(".nf")), "--json",
                                                  *args.fit_args.split()))
            row = json.loads(out)
            rows.append({"photo": path.name, "wall_seconds": round(seconds, 2), "psnr": row["psnr"],
                         "steps": row["steps"], "stopped": row["stopped"], "bytes": row["bytes"]})
            print(json.dumps(rows[-1]), flush=True)
    return {"machine": _machine(), "rows": rows,
            "median_wall_seconds": statistics.median(r["wall_seconds"] for r in rows),
            "median_psnr": statistics.median(r["psnr"] for r in rows)}


def big(args) -> dict:
    """A 50-megapixel photo (a mosaic of real photos, 9 x 8 of 1024x683): fit and render, memory measured."""
    from PIL import Image

    photos = sorted((DATA / "photos").glob("*.jpg"))
    tile_w, tile_h = 1024, 683
    mosaic = Image.new("RGB", (9 * tile_w, 8 * tile_h))
    for i in range(72):
        mosaic.paste(Image.open(photos[i % len(photos)]).convert("RGB").resize((tile_w, tile_h)),
                     ((i % 9) * tile_w, (i // 9) * tile_h))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mosaic.png"
        mosaic.save(src)
        del mosaic
        nf = src.with_suffix(".nf")
        fit_s, fit_peak, out = _run_measured(_nfit("fit", str(src), "-o", str(nf), "--steps", str(args.big_steps),
                                                   "--target-psnr", "0", "--json"))
        row = json.loads(out)
        render_s, render_peak, _ = _run_measured(_nfit("render", str(nf), "-o", str(Path(tmp) / "back.png")))
        return {"machine": _machine(), "pixels": 9 * tile_w * 8 * tile_h, "steps": args.big_steps,
                "fit": {"wall_seconds": round(fit_s, 1), "peak_rss_bytes": fit_peak, "psnr": row["psnr"],
                        "tiles": row["tiles"], "bytes": row["bytes"]},
                "render": {"wall_seconds": round(render_s, 1), "peak_rss_bytes": render_peak}}


def audio(args) -> dict:
    """A 10-minute recording (real speech clips end to end, at 22.05 kHz): fit, render at 48 kHz, clicks."""
    import soundfile as sf

    from nfit.signals.audio import read_audio, resample

    rate, target = 22_050, 600 * 22_050
    parts, have = [], 0
    for path in sorted((DATA / "audio_speech").glob("*.ogg")):
        values, _, r = read_audio(path)
        values = resample(values.mean(axis=1, keepdims=True), r, rate) if r != rate else values.mean(axis=1, keepdims=True)
        parts.append(values)
        have += len(values)
        if have >= target:
            break
    signal = np.concatenate(parts)[:target, 0] * 2 - 1  # [-1, 1] for the file
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "talk.wav"
        sf.write(src, signal, rate, subtype="PCM_16")
        nf_path = src.with_suffix(".nf")
        fit_s, fit_peak, out = _run_measured(_nfit("fit", str(src), "-o", str(nf_path), "--steps", str(args.audio_steps),
                                                   "--target-psnr", "0", "--json"))
        row = json.loads(out)
        render_s, render_peak, _ = _run_measured(_nfit("render", str(nf_path), "--sample-rate", "48000", "-o",
                                                       str(Path(tmp) / "back.wav")))
        nf = nfit.load(nf_path)
        back, _, back_rate = read_audio(Path(tmp) / "back.wav")
        clicks = seam_ratio(torch.from_numpy(back), nf.tiling, nf.shape, 0)
        return {"machine": _machine(), "seconds_of_audio": target / rate, "steps": args.audio_steps,
                "fit": {"wall_seconds": round(fit_s, 1), "peak_rss_bytes": fit_peak, "psnr": row["psnr"],
                        "tiles": row["tiles"]},
                "render_48k": {"wall_seconds": round(render_s, 1), "peak_rss_bytes": render_peak, "rate": back_rate,
                               "seam_ratio": round(clicks, 3)}}


def audio_curves(args) -> dict:
    """``curves`` for recordings: the held-out clips of the audio tile initialisation's recipe, end to
    end (speech at 22.05 kHz, music at 44.1 kHz, mono), fitted (a) whole, (b) in random windows,
    (c) in windows from ``--audio-init``; the step ratio as for photos."""
    import soundfile as sf

    from build_tile_init import held_out_and_training

    from nfit.signals.audio import read_audio, resample

    held, _ = held_out_and_training("audio")
    init = load_init(args.audio_init) if args.audio_init else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, rate in (("speech", 22_050), ("music", 44_100)):
            parts = []
            for path in (p for p in held if p.parent.name == f"audio_{name}"):
                values, _, r = read_audio(path)
                mono = values.mean(axis=1, keepdims=True)
                parts.append(resample(mono, r, rate) if r != rate else mono)
            src = Path(tmp) / f"{name}.wav"
            sf.write(src, np.concatenate(parts)[:, 0] * 2 - 1, rate, subtype="PCM_16")
            signal = read_signal(src)
            row = {"recording": name, "files": len(parts), "rate": rate, "seconds": round(signal.shape[0] / rate, 1)}
            whole, c = fit_curve(signal, tiles=TileConfig(tile=0),
                                 config=FitConfig(steps=10_000, seconds=args.whole_seconds, device="cpu"))
            row["whole"] = {"psnr": whole.summary["psnr"], "curve": c.to_json()}
            rand, c = fit_curve(signal, tiles=TileConfig(), config=nfit.api.fit_config("tiled", steps=args.steps,
                                                                                       target_psnr=0, device="cpu"))
            row["random_tiles"] = {"psnr": rand.summary["psnr"], "curve": c.to_json(), "tiles": rand.tiles}
            if init is not None:
                row.update(_init_variant(signal, init, row, args))
            rows.append(row)
            _print_summary(row)
    return _result(args, recordings=rows)


def plot(args) -> dict:
    """The README's picture from the JSON of ``curves``: mean PSNR against wall time and against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.json_in).read_text())
    names = {"whole": "one SIREN 5x256 for the whole photo", "random_tiles": "tiles from random (Adam)",
             "init_tiles": "tiles from the shipped initialisation"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    colours = {"whole": "tab:grey", "random_tiles": "tab:blue", "init_tiles": "tab:green"}
    longest = max(c[-1][1] for r in data["photos"] for k in names if k in r for c in [r[k]["curve"]])
    seconds = np.linspace(0, longest, 200)
    for key, label in names.items():
        rows = [r[key]["curve"] for r in data["photos"] if key in r]
        if not rows:
            continue
        on_time = [np.interp(seconds, [t for _, t, _ in c], [p for _, _, p in c], left=np.nan, right=c[-1][2])
                   for c in rows]
        left.plot(seconds, np.nanmean(on_time, axis=0), label=label, color=colours[key])
        if key != "whole":  # the steps every photo has a PSNR for (fit_sgd reports from step 1)
            steps = sorted(set.intersection(*[{n for n, _, _ in c} for c in rows]))
            right.plot(steps, np.mean([[dict((n, p) for n, _, p in c)[k] for k in steps] for c in rows], axis=0),
                       label=label, color=colours[key])
    left.set(xlabel="seconds of fitting (2 CPU cores)", ylabel="PSNR (dB)",
             title=f"mean of {len(data['photos'])} held-out photos, ~800x533")
    right.set(xlabel="steps", ylabel="PSNR (dB)", title="tiles: PSNR against steps")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    return {"plot": str(args.out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["curves", "cli", "big", "audio", "audio-curves", "plot"])
    ap.add_argument("--data", default=str(DATA / "photos"))
    ap.add_argument("--pattern", default="kphotoalbum_*.jpg")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--init", help="a tile initialisation for variant (c)")
    ap.add_argument("--audio-init", help="audio-curves: an audio tile initialisation for variant (c)")
    ap.add_argument("--reuse", type=Path, help="curves: keep (a) and (b) of this earlier JSON, measure (c) again")
    ap.add_argument("--steps", type=int, default=150, help="steps of the tile fits in `curves`")
    ap.add_argument("--whole-seconds", type=float, default=90.0)
    ap.add_argument("--big-steps", type=int, default=3)
    ap.add_argument("--audio-steps", type=int, default=30)
    ap.add_argument("--fit-args", default="", help="cli: more options of nfit fit, e.g. '--init random'")
    ap.add_argument("--json", type=Path, help="where to write the result")
    ap.add_argument("--json-in", type=Path, help="plot: the JSON of a `curves` run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "tiles.png", help="plot: the picture")
    args = ap.parse_args()
    result = {"curves": curves, "cli": cli, "big": big, "audio": audio, "audio-curves": audio_curves,
              "plot": plot}[args.part](args)
    write_result(result, args.json)


def write_result(result: dict, path: Path | None) -> None:
    """The result as JSON: to ``path``, or printed."""
    text = json.dumps(result, indent=1)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
