#!/usr/bin/env python
"""Rate-distortion of coded .nf files against JPEG and WebP on held-out photos (issue 18).

Photos: the KPhotoAlbum snapshots of ``dev/photos`` (no shipped initialisation saw them),
centre-cropped to 768x512 (Kodak's size). For each photo, nfit fits tiles once per quality
target (``--targets``) from the shipped tile initialisation and from random, stores each fit
at every bit width of ``--bits`` (the same coding ``nfit fit`` writes: nfit.rate.coded), and
counts the bytes of the .nf file as written (header and metadata included) and the PSNR of
what it decodes to (8-bit, against the photo). JPEG and WebP (Pillow) are swept over their
quality settings; their PSNR at nfit's bits per pixel is read off their curves (linear in
log bpp). Encode seconds: the fit plus the coding; decode: loading the .nf and rendering it.

    PYTHONPATH=. python benchmarks/bench_rd.py --json benchmarks/results/rd.json --plot docs/rd.png
    PYTHONPATH=. python benchmarks/bench_rd.py audio --json benchmarks/results/rd_audio.json
    PYTHONPATH=. python benchmarks/bench_rd.py grid --codecs benchmarks/results/rd.json --json benchmarks/results/rd_grid.json
    PYTHONPATH=. python benchmarks/bench_rd.py --json-in benchmarks/results/rd.json --plot docs/rd.png \
        --grid-json benchmarks/results/rd_grid.json benchmarks/results/rd_grid_kodaklike.json

``grid``: latent-grid fields (``nfit fit --field grid``, :mod:`nfit.latent`) on the same crops, one
fit per ``--bpps`` budget (and one at the default lambda) and ``--seeds`` seed, each as written by
``nfit fit``; JPEG at the same bpp read off the curves of an earlier run (``--codecs``). One photo's
result moves by up to ~1 dB with the seed: compare variants on the mean over photos, or over seeds.

``audio``: a speech and a music clip of ``dev/audio_*`` (at their own rate and channels): nfit's
tiles (from random: nfit ships no audio initialisation) fitted to each ``--targets`` and coded
at each ``--bits``, against Opus and MP3 (PyAV's libopus and libmp3lame) over their bit rates.
PSNR as nfit measures audio: samples mapped from [-1, 1] to [0, 1]; a codec's output is aligned
to the clip by cross-correlation first (encoder delay). Rate: bits per second and per sample.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nfit  # noqa: E402
from nfit.fieldfile import field_bytes  # noqa: E402
from nfit.config import CODING_FINETUNE  # noqa: E402
from nfit.inits import default_init  # noqa: E402
from nfit.rate import coded, finetune  # noqa: E402

FINETUNE_STEPS = CODING_FINETUNE["steps"]

# Published Kodak figures (PSNR dB at bpp), drawn for reference (DESIGN.md; issue 18)
PUBLISHED = {
    "JPEG (Kodak, published)": [(0.3, 26.0), (0.5, 29.0), (1.0, 32.6)],
    "COIN (Kodak)": [(0.3, 26.4), (0.5, 27.8), (1.0, 30.0)],
    "Strumpler et al. 2022 (Kodak)": [(0.3, 28.9), (0.5, 30.6), (0.78, 32.1)],
    "BPG (Kodak)": [(0.3, 31.0), (0.5, 33.3), (1.0, 37.2)],
}


def psnr8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse)


def crop(path: Path, size=(768, 512)) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        left, top = (w - size[0]) // 2, (h - size[1]) // 2
        return im.crop((left, top, left + size[0], top + size[1]))


def codec_curve(im: Image.Image, fmt: str) -> list[tuple[float, float]]:
    ref = np.asarray(im)
    points = []
    for quality in (2, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 100):
        buf = io.BytesIO()
        im.save(buf, fmt, quality=quality)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        points.append((buf.tell() * 8 / (im.width * im.height), psnr8(back, ref)))
    return sorted(points)


def at_bpp(curve: list[tuple[float, float]], bpp: float) -> float | None:
    """A codec's PSNR at ``bpp``, linear in log bpp between its measured points; None outside them."""
    xs = [math.log(b) for b, _ in curve]
    if not xs[0] <= math.log(bpp) <= xs[-1]:
        return None
    return float(np.interp(math.log(bpp), xs, [p for _, p in curve]))


def nfit_points(png: Path, ref: np.ndarray, init: str, targets: list[float], bits: list[int],
                tuned_bits: list[int]) -> list[dict]:
    """``init``: "default" (the shipped tile initialisation) or "random"."""
    points, seen = [], set()
    pixels = ref.shape[0] * ref.shape[1]
    reference = None if init == "random" else default_init("image", 3).params
    for target in targets:
        began = time.perf_counter()
        nf = nfit.fit(png, init=init, target_psnr=target, bits=0)  # float; coded below at every width
        fit_seconds = time.perf_counter() - began
        if nf.summary["steps"] in seen:  # the initialisation's SGD steps passed this target too: the same fit
            continue
        seen.add(nf.summary["steps"])
        values = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255)
        for b, tuned in [(b, False) for b in bits] + [(b, True) for b in tuned_bits]:
            began = time.perf_counter()
            c = finetune(nf, reference, values, b, torch.device("cpu"), steps=FINETUNE_STEPS) if tuned else coded(nf, reference, b)
            size = field_bytes(c)
            code_seconds = time.perf_counter() - began
            with tempfile.TemporaryDirectory() as tmp:
                path = c.save(Path(tmp) / "x.nf")
                began = time.perf_counter()
                out = nfit.render(path)
                decode_seconds = time.perf_counter() - began
            rendered = np.round(out.numpy() * 255).clip(0, 255).astype(np.uint8)
            points.append({"init": init, "target": target, "bits": b, "finetuned": tuned, "bytes": size,
                           "bpp": size * 8 / pixels, "psnr": psnr8(rendered, ref), "float_psnr": nf.summary["psnr"],
                           "steps": nf.summary["steps"], "encode_s": fit_seconds + code_seconds,
                           "decode_s": decode_seconds})
            print(f"  {init} target {target} bits {b}{' fine-tuned' if tuned else ''}: {size:,} B, {size * 8 / pixels:.2f} bpp, "
                  f"{points[-1]['psnr']:.2f} dB (float {nf.summary['psnr']:.2f})", flush=True)
    return points


def pareto(points: list[dict]) -> list[dict]:
    """Points no other beats on both size and PSNR, by bpp."""
    best, out = -1.0, []
    for p in sorted(points, key=lambda p: (p["bpp"], -p["psnr"])):
        if p["psnr"] > best:
            out.append(p)
            best = p["psnr"]
    return out


def plot(results: dict, path: Path, grid_runs: list[dict] | None = None) -> None:
    """PSNR against bpp on the photos of ``results`` (tiles, JPEG, WebP, published figures; latent grids
    of the first of ``grid_runs``, which should be of the same photos), and, with ``grid_runs``, a
    second panel: each photo's latent grid against JPEG at the same bpp, every run's photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if grid_runs else 1, figsize=(13 if grid_runs else 7.5, 4.8), squeeze=False)
    ax = axes[0, 0]
    for name, style in (("default", "o-"), ("random", "s-")):
        xs, ys = mean_curve(results, name)
        if xs:
            ax.plot(xs, ys, style, label=f"nfit, tiles from {'the shipped init' if name == 'default' else 'random'}")
    if grid_runs:  # latent grids: mean over photos per budget setting, by mean bpp
        settings: dict = {}
        for photo in grid_runs[0]["photos"]:
            for p in photo["grid"]:
                settings.setdefault(p["budget_bpp"], []).append(p)
        pts = sorted((statistics.mean(p["bpp"] for p in v), statistics.mean(p["psnr"] for p in v))
                     for v in settings.values() if len(v) == len(grid_runs[0]["photos"]))
        ax.plot(*zip(*pts), "D-", color="black", label="nfit, latent grid (--field grid)")
    for codec, style in (("JPEG", "^-"), ("WEBP", "v-")):
        grid = np.geomspace(0.2, 12, 40)
        ys = [statistics.mean(at_bpp(p[codec], g) or float("nan") for p in results["photos"]) for g in grid]
        ax.plot(grid, ys, style, markersize=3, label=f"{'WebP' if codec == 'WEBP' else codec} (Pillow), same photos")
    for name, pts in PUBLISHED.items():
        ax.plot(*zip(*pts), "--", alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Rate-distortion, {len(results['photos'])} held-out 768x512 photos (mean)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below: hides no point
    if grid_runs:
        _plot_against_jpeg(axes[0, 1], grid_runs)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")


def _plot_against_jpeg(ax, grid_runs: list[dict]) -> None:
    """Each photo's latent-grid PSNR less JPEG's at the same bpp, against bpp, one colour per run, one
    line per seed, and issue 18's two targets."""
    colours = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for run, colour in zip(grid_runs, colours):
        for k, photo in enumerate(photo for photo in run["photos"] if photo["grid"]):
            by_seed: dict[int, list[tuple[float, float]]] = {}
            for p in photo["grid"]:
                if p["jpeg_psnr_same_bpp"] is not None:
                    by_seed.setdefault(p.get("seed", 0), []).append((p["bpp"], p["psnr"] - p["jpeg_psnr_same_bpp"]))
            seeds = sorted(by_seed)
            label = photo["name"] + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else "")
            for i, seed in enumerate(seeds):
                ax.plot(*zip(*sorted(by_seed[seed])), "-", color=colour, alpha=0.85, marker="osD^v<>"[k % 7],
                        label=label if i == 0 else None)  # one legend entry per photo
    ax.axhline(0, color="black", lw=1)
    ax.plot([0.3], [2.0], "*", color="black", markersize=12, label="issue 18: JPEG + 2 dB at 0.3 bpp")
    ax.plot([1.0], [0.0], "*", color="grey", markersize=12, label="issue 18: JPEG at 1 bpp")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("latent grid PSNR - JPEG PSNR at that bpp (dB)")
    ax.set_title("Latent grid against JPEG, per photo\n(red: the photos at left; blue: four of Kodak's difficulty)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.13))  # below: hides no point


def mean_curve(results: dict, init: str) -> tuple[list[float], list[float]]:
    """nfit's mean PSNR over the photos at each (target, bits) setting, on its mean bpp."""
    settings: dict[tuple, list[dict]] = {}
    for photo in results["photos"]:
        for p in photo["nfit"]:
            if p["init"] == init:
                settings.setdefault((p["target"], p["bits"], p.get("finetuned", False)), []).append(p)
    pts = [{"bpp": statistics.mean(p["bpp"] for p in v), "psnr": statistics.mean(p["psnr"] for p in v)}
           for v in settings.values() if len(v) == len(results["photos"])]
    front = pareto(pts)
    return [p["bpp"] for p in front], [p["psnr"] for p in front]


def _audio_psnr(decoded: np.ndarray, ref: np.ndarray) -> float:
    """PSNR on nfit's audio scale ((x + 1) / 2) of ``decoded`` [T', C] against ``ref`` [T, C] (both in
    [-1, 1]), after shifting ``decoded`` by the lag that best aligns it (codecs delay their output)."""
    a, b = decoded.mean(1), ref.mean(1)
    n = min(len(b), 1 << 16)
    corr = np.correlate(a[: n + 4096], b[:n], mode="valid")[:4096]
    lag = int(np.argmax(corr))
    out = np.zeros_like(ref)
    part = decoded[lag: lag + len(ref)]
    out[: len(part)] = part
    mse = np.mean(((np.clip(out, -1, 1) - ref) / 2) ** 2)
    return 10 * math.log10(1 / mse)


def codec_audio(ref: np.ndarray, rate: int, codec: str, kbps: int) -> tuple[int, float]:
    """Bytes of ``ref`` [T, C] in [-1, 1] encoded by PyAV's ``codec`` at ``kbps``, and its PSNR."""
    import av

    layout = "mono" if ref.shape[1] == 1 else "stereo"
    out_rate = rate if codec != "libopus" else min((r for r in (8000, 12000, 16000, 24000, 48000) if r >= rate),
                                                  default=48000)
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg" if codec == "libopus" else "mp3") as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        stream.bit_rate = kbps * 1000
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(ref.T.astype(np.float32)), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=out_rate)
        for f in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    size = buf.tell()
    buf.seek(0)
    chunks = []
    with av.open(buf) as container:
        back = av.AudioResampler(format="flt", layout=layout, rate=rate)
        for f in container.decode(audio=0):
            for g in back.resample(f):
                chunks.append(g.to_ndarray().reshape(-1, ref.shape[1]))
    return size, _audio_psnr(np.concatenate(chunks), ref)


def audio(args) -> dict:
    import soundfile as sf

    results = {"machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "clips": []}
    for path in (Path(args.data).parent / c for c in args.clips):
        ref, rate = sf.read(str(path), dtype="float32", always_2d=True)
        seconds = len(ref) / rate
        print(f"{path.name}: {rate} Hz, {ref.shape[1]} channel(s), {seconds:.2f} s", flush=True)
        entry = {"name": path.name, "rate": rate, "channels": ref.shape[1], "seconds": seconds,
                 "file_bytes": path.stat().st_size, "nfit": [], "codecs": []}
        for codec in ("libopus", "libmp3lame"):
            for kbps in (8, 16, 24, 32, 48, 64, 96, 128):
                try:
                    size, psnr = codec_audio(ref, rate, codec, kbps)
                except Exception as err:  # a rate the codec refuses at this sample rate
                    print(f"  {codec} {kbps} kb/s: {type(err).__name__}: {err}")
                    continue
                entry["codecs"].append({"codec": codec, "kbps": kbps, "bytes": size, "psnr": psnr})
                print(f"  {codec} {kbps} kb/s: {size:,} B, {psnr:.2f} dB", flush=True)
        values = torch.from_numpy((np.clip(ref, -1, 1) + 1) / 2)
        for target in args.targets:
            began = time.perf_counter()
            nf = nfit.fit(path, target_psnr=target, bits=0)
            fit_seconds = time.perf_counter() - began
            for b in args.bits:
                c = coded(nf, None, b)
                size = field_bytes(c)
                psnr = float(10 * torch.log10(1 / ((c.render().clamp(0, 1) - values) ** 2).mean()))
                entry["nfit"].append({"target": target, "bits": b, "bytes": size, "psnr": psnr,
                                      "float_psnr": nf.summary["psnr"], "fit_s": fit_seconds})
                print(f"  nfit target {target} bits {b}: {size:,} B ({size * 8 / seconds / 1000:.0f} kb/s), "
                      f"{psnr:.2f} dB (float {nf.summary['psnr']:.2f})", flush=True)
        results["clips"].append(entry)
    return results


def audio_table(results: dict) -> None:
    print("\n| clip | coder | setting | kb/s | bits/sample | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for clip in results["clips"]:
        samples = clip["seconds"] * clip["rate"] * clip["channels"]
        rows = [("nfit", f"{p['bits']} bits, fit to {p['target']:g} dB", p) for p in clip["nfit"]]
        rows += [("Opus" if p["codec"] == "libopus" else "MP3", f"{p['kbps']} kb/s", p) for p in clip["codecs"]]
        for coder, setting, p in rows:
            print(f"| {clip['name']} | {coder} | {setting} | {p['bytes'] * 8 / clip['seconds'] / 1000:.1f} | "
                  f"{p['bytes'] * 8 / samples:.2f} | {p['psnr']:.2f} |")


def grid(args) -> dict:
    codecs = {p["name"]: p for p in json.loads(Path(args.codecs).read_text())["photos"]} if args.codecs else {}
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "photos": []}
    for name in args.photos:
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / f"{name}.png"
            crop(Path(args.data) / f"kphotoalbum_{name}.jpg").save(png)
            ref = np.asarray(Image.open(png).convert("RGB"))
            entry = {"name": name, "png_bytes": png.stat().st_size, "grid": []}
            # JPEG's curve from the earlier run where it has the photo, else swept here (a second)
            jpeg = codecs[name]["JPEG"] if name in codecs else codec_curve(Image.open(png), "JPEG")
            for bpp, seed in itertools.product(([] if args.no_default else [None]) + args.bpps, args.seeds):
                began = time.perf_counter()
                nf = nfit.fit(png, field="grid", bpp=bpp, seed=seed)
                encode = time.perf_counter() - began
                path = nf.save(Path(tmp) / "x.nf")
                began = time.perf_counter()
                rendered = np.round(nfit.render(path).numpy() * 255).clip(0, 255).astype(np.uint8)
                decode = time.perf_counter() - began
                size = path.stat().st_size
                point = {"budget_bpp": bpp, "seed": seed, "bytes": size,
                         "bpp": size * 8 / (ref.shape[0] * ref.shape[1]),
                         "psnr": psnr8(rendered, ref), "ssim": nf.summary["ssim"], "lambda": nf.summary["lambda"],
                         "steps": nf.summary["steps"], "encode_s": encode, "decode_s": decode}
                point["jpeg_psnr_same_bpp"] = at_bpp(jpeg, point["bpp"])
                entry["grid"].append(point)
                print(name, json.dumps(point), flush=True)
        out["photos"].append(entry)
    return out


def grid_table(results: dict) -> None:
    print("\n| photo | budget | seed | .nf bpp | PSNR dB | JPEG at that bpp | difference | encode s | decode s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for photo in results["photos"]:
        for p in photo["grid"]:
            j = p["jpeg_psnr_same_bpp"]
            budget = "default" if p["budget_bpp"] is None else f"--bpp {p['budget_bpp']:g}"
            jpeg, diff = ("-", "-") if j is None else (f"{j:.2f}", f"{p['psnr'] - j:+.2f}")
            print(f"| {photo['name']} | {budget} | {p.get('seed', 0)} | {p['bpp']:.2f} | {p['psnr']:.2f} | {jpeg} "
                  f"| {diff} | {p['encode_s']:.0f} | {p['decode_s']:.1f} |")
    for line in seed_summary(results):
        print(line)


def seed_summary(results: dict) -> list[str]:
    """Per budget: the mean difference from JPEG over the photos for each seed, and each photo's spread
    across seeds (largest minus smallest difference): how far one run of a photo is to be trusted."""
    by_budget: dict = {}
    for photo in results["photos"]:
        for p in photo["grid"]:
            if p["jpeg_psnr_same_bpp"] is not None:
                by_budget.setdefault(p["budget_bpp"], {}).setdefault(photo["name"], {})[p.get("seed", 0)] = (
                    p["psnr"] - p["jpeg_psnr_same_bpp"])
    lines = []
    for budget, photos in by_budget.items():
        seeds = sorted({seed for runs in photos.values() for seed in runs})
        if len(seeds) < 2:
            continue
        means = [statistics.mean(runs[seed] for runs in photos.values() if seed in runs) for seed in seeds]
        spreads = {name: max(runs.values()) - min(runs.values()) for name, runs in photos.items()}
        lines.append(f"{'default' if budget is None else f'--bpp {budget:g}'}: mean difference per seed "
                     + ", ".join(f"{s} {m:+.2f}" for s, m in zip(seeds, means)) + "; spread per photo "
                     + ", ".join(f"{n} {v:.2f}" for n, v in spreads.items()))
    return lines


def main() -> None:
    if sys.argv[1:2] == ["grid"]:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("mode")
        ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/dev/photos"))
        ap.add_argument("--photos", nargs="+", default=["donna", "bar55_2", "anne_helene"])
        ap.add_argument("--bpps", type=float, nargs="+", default=[0.3, 1.0])
        ap.add_argument("--no-default", action="store_true", help="no fit at the default lambda, budgets only")
        ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fit each budget once per seed (the networks' draw, the rounding noise): one photo's "
                             "result moves by up to ~1 dB with it, the mean over photos far less")
        ap.add_argument("--codecs", default=str(ROOT / "benchmarks/results/rd.json"))
        ap.add_argument("--json")
        ap.add_argument("--json-in")
        args = ap.parse_args()
        results = json.loads(Path(args.json_in).read_text()) if args.json_in else grid(args)
        if args.json and not args.json_in:
            Path(args.json).write_text(json.dumps(results, indent=1))
        grid_table(results)
        return
    if sys.argv[1:2] == ["audio"]:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("mode")
        ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/dev/photos"))
        ap.add_argument("--clips", nargs="+", default=["audio_speech/airplane_cs_let-v-budrada.ogg",
                                                        "audio_music/ambi_drone.flac"])
        ap.add_argument("--targets", type=float, nargs="+", default=[38.0, 45.0])
        ap.add_argument("--bits", type=int, nargs="+", default=[6, 8, 10, 12])
        ap.add_argument("--json")
        ap.add_argument("--json-in")
        args = ap.parse_args()
        results = json.loads(Path(args.json_in).read_text()) if args.json_in else audio(args)
        if args.json and not args.json_in:
            Path(args.json).write_text(json.dumps(results, indent=1))
        audio_table(results)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/dev/photos"))
    ap.add_argument("--photos", nargs="+", default=["anne_helene", "bar55_2", "donna", "grand_canyon_1"])
    ap.add_argument("--targets", type=float, nargs="+", default=[34.0, 40.0])
    ap.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    ap.add_argument("--tuned-bits", type=int, nargs="*", default=[4, 5, 6],
                    help="bit widths also coded after quantisation-aware fine-tuning (nfit.rate.finetune)")
    ap.add_argument("--no-random", action="store_true", help="only the shipped initialisation")
    ap.add_argument("--finetune-steps", type=int, default=CODING_FINETUNE["steps"])
    ap.add_argument("--json")
    ap.add_argument("--json-in", help="plot and tabulate an earlier run")
    ap.add_argument("--plot")
    ap.add_argument("--grid-json", nargs="+", help="with --plot: also draw latent grids (runs of the grid mode; "
                    "the first on the same photos as --json-in, each run's photos against JPEG in a second panel)")
    args = ap.parse_args()
    global FINETUNE_STEPS
    FINETUNE_STEPS = args.finetune_steps
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.json_in:
        results = json.loads(Path(args.json_in).read_text())
    else:
        results = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
                              f"{torch.get_num_threads()} threads", "date": time.strftime("%Y-%m-%d"),
                   "command": " ".join(sys.argv), "finetune_steps": FINETUNE_STEPS, "photos": []}
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.photos:
                im = crop(Path(args.data) / f"kphotoalbum_{name}.jpg")
                png = Path(tmp) / f"{name}.png"
                im.save(png)
                ref = np.asarray(im)
                print(f"{name}: PNG {png.stat().st_size * 8 / (768 * 512):.2f} bpp", flush=True)
                entry = {"name": name, "png_bytes": png.stat().st_size, "JPEG": codec_curve(im, "JPEG"),
                         "WEBP": codec_curve(im, "WEBP"), "nfit": []}
                for init in ("default",) + (() if args.no_random else ("random",)):
                    entry["nfit"] += nfit_points(png, ref, init, args.targets, args.bits, args.tuned_bits)
                results["photos"].append(entry)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    table(results)
    if args.plot:
        plot(results, Path(args.plot), [json.loads(Path(g).read_text()) for g in args.grid_json or []])


def bpp_at(curve: list[tuple[float, float]], psnr: float) -> float | None:
    """A codec's bpp at ``psnr`` (log bpp linear in PSNR between its points); None outside them."""
    ys = [p for _, p in curve]
    if not min(ys) <= psnr <= max(ys):
        return None
    order = np.argsort(ys)
    return float(math.exp(np.interp(psnr, np.array(ys)[order], np.log([b for b, _ in curve])[order])))


def table(results: dict) -> None:
    """nfit's best points per photo (Pareto front: fits x bit widths x fine-tuning), and the bpp JPEG
    and WebP need for the same PSNR."""
    print("\n| photo | nfit from | nfit bpp | PSNR dB | coding | JPEG bpp, same PSNR | WebP bpp | PNG bpp |"
          " encode s | decode s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for photo in results["photos"]:
        for init in ("default", "random"):
            front = [p for p in pareto([p for p in photo["nfit"] if p["init"] == init]) if p["psnr"] >= 25]
            for p in front:
                j, w = bpp_at(photo["JPEG"], p["psnr"]), bpp_at(photo["WEBP"], p["psnr"])
                how = f"{p['bits']} bits{' + fine-tuning' if p.get('finetuned') else ''}, fit to {p['target']:g} dB"
                print(f"| {photo['name']} | {'shipped init' if init == 'default' else 'random'} | {p['bpp']:.2f} | "
                      f"{p['psnr']:.2f} | {how} | {'-' if j is None else f'{j:.2f}'} | {'-' if w is None else f'{w:.2f}'}"
                      f" | {photo['png_bytes'] * 8 / (768 * 512):.2f} | {p['encode_s']:.0f} | {p['decode_s']:.1f} |")


if __name__ == "__main__":
    main()
