#!/usr/bin/env python
"""Audio and video meta-learning: MAML (K=4) against GradNCP (K=16, gamma 0.25).

    # audio: 1 s clips at 16 kHz, meta-train both, evaluate on held-out clips at K_test=16
    PYTHONPATH=. python benchmarks/bench_modalities.py audio --steps 30 --width 64 --depth 5 --batch 4
    # video: clips cut from dev/video (held-out videos for testing), SIREN and NeRV, both algorithms
    PYTHONPATH=. python benchmarks/bench_modalities.py video --res 32 --frames 8 --steps 20 --width 64 --depth 5 --batch 4
    # memory: peak memory of one meta-step against clip size (video SIREN, audio duration)
    PYTHONPATH=. python benchmarks/bench_modalities.py memory
    # one outer step's time and peak memory at a given scale (what `audio`/`video` size their runs by)
    PYTHONPATH=. python benchmarks/bench_modalities.py step --modality audio --width 256 --depth 5 --batch 8

Every training run, evaluation and step measurement runs in a fresh subprocess, so
its peak memory is its own: CUDA's max_memory_allocated, or on CPU the process's
VmHWM (peak resident set, which includes ~0.3 GB of Python + torch; the idle figure
is reported beside it). Evaluation: ``nfit.evaluation.evaluate_folder`` on the
held-out clips, K_test = 16 SGD steps at the inner lr (1e-2), with gradient
re-scaling (GradNCP's Algorithm 2, gamma 0.25) and plain; PSNR mean over clips.
Results print as JSON lines (and with ``--json FILE`` are appended there), then a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_meta import emit  # noqa: E402

DEV = ROOT.parent / "shared" / "datasets" / "dev"
ALGOS = {"maml": {"inner_steps": 4}, "gradncp": {"inner_steps": 16, "gamma": 0.25}}
NERV_SMALL = {"strides": [2, 2, 2], "channels": [32, 16, 16], "base_channels": 32, "mlp_width": 128, "pe_levels": 20}


def machine() -> dict:
    """bench_meta.machine() plus the CPU model."""
    from bench_meta import machine as base

    info = base()
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def _subprocess(kind: str, spec: dict) -> dict:
    """Run ``_step`` / ``_run`` in a fresh interpreter; its last stdout line is the result."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, kind, json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {**spec, "error": tail, "wall_s": round(time.perf_counter() - t, 1)}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def _field_options(spec: dict):
    from nfit.config import FieldOptions

    return FieldOptions(name=spec.get("field", "siren"), width=spec.get("width"), depth=spec.get("depth"),
                        extra=spec.get("field_config"))


def _data_config(spec: dict):
    from nfit.config import DataConfig

    return DataConfig(modality=spec["modality"], res=spec.get("res"), sample_rate=spec.get("sample_rate", 16000),
                      duration=spec.get("duration", 1.0), frames=spec.get("frames", 16), channels=spec.get("channels"),
                      val_limit=spec.get("val_limit", 8), workers=spec.get("workers", 0))


# ------------------------------------------------------------------ in the subprocess


def _step(spec: dict) -> dict:
    """Time and peak memory of ``reps`` outer steps (after ``warmup``) on a batch of random targets."""
    import torch

    from nfit.device import peak_memory, resolve_device, tune_cpu_allocator
    from nfit.fields import build_field, field_config
    from nfit.meta import build_strategy
    from nfit.signals import MODALITIES

    torch.set_num_threads(spec.get("threads", 2))
    device = resolve_device(spec.get("device", "cpu"))
    tune_cpu_allocator(device)  # as nfit meta-train does
    idle = peak_memory(device)
    dcfg = _data_config(spec)
    modality = spec["modality"]
    shape = MODALITIES[modality].dataset_shape(dcfg.signal_options(modality))
    channels = spec.get("channels") or (1 if modality == "audio" else 3)
    field = build_field(spec.get("field", "siren"), field_config(_field_options(spec), modality, shape, channels))
    gen = torch.Generator().manual_seed(0)
    theta = {k: v.to(device).requires_grad_(True) for k, v in field.init_params(gen).items()}
    strategy = build_strategy(spec["algo"], ALGOS[spec["algo"]])
    batch = spec["batch"]
    targets = field.to_units(torch.rand(batch, *shape, channels, generator=gen).to(device))
    coords = field.unit_coords(shape, device=device)
    times = []
    for i in range(spec.get("reps", 1) + spec.get("warmup", 0)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        strategy.outer_loss(field, theta, coords, targets).loss.backward()
        for v in theta.values():
            v.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= spec.get("warmup", 0):
            times.append(time.perf_counter() - t)
    return {**spec, "shape": list(shape), "params": sum(v.numel() for v in theta.values()),
            "step_s_median": round(statistics.median(times), 3), "step_s": [round(x, 3) for x in times],
            "peak_bytes": peak_memory(device), "idle_bytes": idle}


def _run(spec: dict) -> dict:
    """Meta-train one algorithm (or nothing, for "random") and evaluate on the test folder."""
    import torch

    from nfit.config import AdaptConfig, TrainConfig
    from nfit.device import peak_memory, resolve_device
    from nfit.evaluation import evaluate_folder
    from nfit.train import LOG_FILE, meta_train

    torch.set_num_threads(spec.get("threads", 2))
    device = resolve_device(spec.get("device", "cpu"))
    idle = peak_memory(device)
    dcfg, fopts = _data_config(spec), _field_options(spec)
    test = Path(spec["test"])
    config = AdaptConfig(steps=spec.get("test_steps", 16), batch_size=spec.get("eval_batch", 16), device=str(device))
    out = {**spec}
    if spec["algo"] == "random":
        t = time.perf_counter()
        rep = evaluate_folder("random", test, config, data_config=dcfg, field_options=fopts)
    else:
        run = Path(spec["run"])
        train = TrainConfig(algo=spec["algo"], steps=spec["steps"], batch_size=spec["batch"], lr=spec.get("lr", 1e-5),
                            val_every=spec["steps"], ckpt_every=spec["steps"], log_every=spec.get("log_every", 5),
                            test_steps=16, device=str(device))
        t = time.perf_counter()
        meta_train(spec["data"], run, train, dcfg, fopts, ALGOS[spec["algo"]], val_dir=test)
        out["train_s"] = round(time.perf_counter() - t, 1)
        rows = [json.loads(x) for x in (run / LOG_FILE).read_text().splitlines()]
        steps = [r for r in rows if r["kind"] == "train"]
        out["step_s_median"] = round(statistics.median(1 / r["steps_per_s"] for r in steps), 3)
        out["peak_bytes"] = max(r["peak_memory"] for r in steps)
        out["train_psnr_last"] = steps[-1]["train_psnr"]
        out["val_psnr"] = {r["step"]: r["val_psnr"] for r in rows if r["kind"] == "val"}
        t = time.perf_counter()
        rep = evaluate_folder(run / "init.safetensors", test, config)
    out["eval_s"] = round(time.perf_counter() - t, 1)
    out["end_peak_bytes"] = peak_memory(device)  # training and evaluation
    out["idle_bytes"] = idle
    out["signals"] = rep.signals
    out["shape"] = list(rep.shape)
    out["params"] = rep.parameters
    out["psnr"] = {name: {"k0": r["psnr_mean"][0], "k16": r["psnr_mean"][-1], "std_k16": r["psnr_std"][-1]}
                   for name, r in rep.results.items()}
    if rep.results["rescaled"]["ssim_mean"] is not None:
        out["ssim_k16"] = {name: r["ssim_mean"][-1] for name, r in rep.results.items()}
    return out


# ------------------------------------------------------------------ datasets


def _link_split(files: list[Path], into: Path) -> None:
    into.mkdir(parents=True)
    for f in files:
        (into / f.name).symlink_to(f.resolve())


def audio_split(data: Path, test_count: int, seed: int, tmp: Path) -> tuple[Path, Path, list[str]]:
    """The deterministic 10% split nfit meta-train itself would make (seed 0); the first
    ``test_count`` of the held-out 10% are the test clips, the other 90% train."""
    from nfit.data import scan_media, split_files

    _, files = scan_media(data, "audio")
    train, held = split_files(files, 0.1, seed)
    test = held[:test_count]
    _link_split(train, tmp / "train")
    _link_split(test, tmp / "test")
    return tmp / "train", tmp / "test", [f.name for f in test]


def cut_video_clips(videos: list[Path], out: Path, frames: int, res: int, per_video: int, stride: int = 1) -> list[str]:
    """``per_video`` clips of ``frames`` frames (every ``stride``-th) per video, centre square
    at ``res``, start frames evenly spread over the video, written as lossless-ish MP4
    (quality 100: CRF 0). Deterministic."""
    import numpy as np

    from nfit.signals.image import quantize
    from nfit.signals.video import probe_video, read_video, write_video

    out.mkdir(parents=True)
    names = []
    for path in videos:
        info = probe_video(path)
        values, fps = read_video(path, res=res, stride=stride)  # decoded once, then sliced: [T, res, res, 3]
        last = len(values) - frames
        starts = sorted({round(i * last / max(1, per_video - 1)) for i in range(per_video)}) if last > 0 else [0]
        for s in starts:
            clip = quantize(values[s : s + frames], 8)
            name = f"{path.stem}_{s:04d}.mp4"
            write_video(out / name, (np.ascontiguousarray(f) for f in clip), "mp4", fps, quality=100)
            names.append(name)
        del values, info
    return names


# ------------------------------------------------------------------ subcommands


def _table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| field | init | train steps | s/step | peak (idle) | re-scaled K=16 | plain K=16 | K=0 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r.get('field', 'siren')} | {r['algo']} | error: {' '.join(r['error'])[:120]} |")
            continue
        p = r["psnr"]
        steps = r.get("steps", 0) if r["algo"] != "random" else 0
        print(f"| {r.get('field', 'siren')} | {r['algo']} | {steps} | {r.get('step_s_median', '-')} | "
              f"{_gib(r.get('peak_bytes'))} ({_gib(r.get('idle_bytes'))}) | {p['rescaled']['k16']:.2f} | "
              f"{p['plain']['k16']:.2f} | {p['rescaled']['k0']:.2f} |")


def cmd_step(args) -> None:
    for algo in args.algos:
        spec = {"modality": args.modality, "algo": algo, "batch": args.batch, "width": args.width, "depth": args.depth,
                "duration": args.duration, "sample_rate": args.sample_rate, "res": args.res, "frames": args.frames,
                "reps": args.reps, "warmup": args.warmup, "device": args.device, "field": args.field,
                "field_config": json.loads(args.field_config) if args.field_config else None}
        emit({"bench": "modality_step", **_subprocess("_step", spec), "machine": machine()}, args.json)


def cmd_audio(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train, test, names = audio_split(Path(args.data), args.test_clips, args.seed, tmp)
        base = {"modality": "audio", "data": str(train), "test": str(test), "sample_rate": args.sample_rate,
                "duration": args.duration, "channels": 1, "width": args.width, "depth": args.depth,
                "batch": args.batch, "steps": args.steps, "lr": args.lr, "device": args.device,
                "eval_batch": args.test_clips, "workers": args.workers}
        for algo in ["random", *args.algos]:
            r = _subprocess("_run", {**base, "algo": algo, "run": str(tmp / algo)})
            r = {"bench": "audio_meta", **r, "test_clips": names, "machine": machine()}
            r.pop("data"), r.pop("test"), r.pop("run", None)
            emit(r, args.json)
            rows.append(r)
    _table(rows, f"audio {args.duration:g} s at {args.sample_rate} Hz, SIREN {args.width}x{args.depth}, "
                 f"batch {args.batch}, {args.steps} outer steps")


def _split_videos(videos: list[Path], test_names: list[str]) -> tuple[list[Path], list[Path]]:
    test = [v for v in videos if v.name in test_names]
    return [v for v in videos if v not in test], test


def cmd_video(args) -> None:
    from nfit.data import scan_media

    _, videos = scan_media(Path(args.data), "video")
    train_v, test_v = _split_videos(videos, args.test_videos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        train_clips = cut_video_clips(train_v, tmp / "train", args.frames, args.res, args.clips_per_video)
        test_clips = cut_video_clips(test_v, tmp / "test", args.frames, args.res, args.test_clips_per_video)
        cut_s = round(time.perf_counter() - t, 1)
        print(f"cut {len(train_clips)} training clips from {len(train_v)} videos and {len(test_clips)} test clips "
              f"from {[v.name for v in test_v]} in {cut_s} s", flush=True)
        base = {"modality": "video", "data": str(tmp / "train"), "test": str(tmp / "test"), "res": args.res,
                "frames": args.frames, "channels": 3, "batch": args.batch, "steps": args.steps, "lr": args.lr,
                "device": args.device, "eval_batch": len(test_clips), "workers": args.workers}
        fields = {"siren": {"field": "siren", "width": args.width, "depth": args.depth},
                  "nerv": {"field": "nerv", "field_config": json.loads(args.nerv_config)}}
        for fname in args.fields:
            for algo in ["random", *args.algos]:
                r = _subprocess("_run", {**base, **fields[fname], "algo": algo, "run": str(tmp / f"{fname}_{algo}")})
                r = {"bench": "video_meta", **r, "train_videos": [v.name for v in train_v],
                     "test_videos": [v.name for v in test_v], "train_clips": len(train_clips),
                     "test_clips": len(test_clips), "machine": machine()}
                r.pop("data"), r.pop("test"), r.pop("run", None)
                emit(r, args.json)
                rows.append(r)
    _table(rows, f"video {args.res}x{args.res}x{args.frames}, batch {args.batch}, {args.steps} outer steps "
                 f"(SIREN {args.width}x{args.depth}; NeRV {args.nerv_config})")


def cmd_memory(args) -> None:
    configs = []
    for size in args.video:
        res, frames = (int(x) for x in size.split("x"))
        configs.append({"modality": "video", "res": res, "frames": frames, "size": f"{res}x{res}x{frames}"})
    for d in args.audio:
        configs.append({"modality": "audio", "duration": d, "sample_rate": 16000, "size": f"{d:g} s"})
    rows = []
    for c in configs:
        for algo in args.algos:
            spec = {**c, "algo": algo, "batch": args.batch, "width": args.width, "depth": args.depth, "reps": 1,
                    "warmup": 0, "device": args.device}
            r = {"bench": "modality_memory", **_subprocess("_step", spec), "machine": machine()}
            emit(r, args.json)
            rows.append(r)
    print(f"\nmemory of one outer step, SIREN {args.width}x{args.depth}, batch {args.batch}\n")
    print("| signal | size | points | algo | s/step | peak | peak - idle |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['modality']} | {r['size']} | - | {r['algo']} | error: {' '.join(r['error'])[:100]} | | |")
            continue
        pts = math.prod(r["shape"])
        print(f"| {r['modality']} | {r['size']} | {pts} | {r['algo']} | {r['step_s_median']} | {_gib(r['peak_bytes'])} | "
              f"{_gib(r['peak_bytes'] - r['idle_bytes'])} |")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in ("_step", "_run"):
        spec = json.loads(sys.argv[2])
        print(json.dumps((_step if sys.argv[1] == "_step" else _run)(spec)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("audio", "video", "memory", "step"):
        p = sub.add_parser(name)
        p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
        p.add_argument("--device", default="cpu")
        p.add_argument("--json", help="append results (JSON lines) to this file")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--width", type=int, default=256)
        p.add_argument("--depth", type=int, default=5)
    for name in ("audio", "video"):
        sub.choices[name].add_argument("--workers", type=int, default=0,
                                       help="decoding processes of meta-train (0: in the training process, counted in s/step)")
    ap = sub.choices["audio"]
    ap.add_argument("--data", default=str(DEV / "audio_speech"))
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-5, help="outer Adam lr (the reference's 1e-5)")
    ap.add_argument("--test-clips", type=int, default=32, help="of the 10%% nfit would hold out (seed --seed)")
    ap.add_argument("--seed", type=int, default=0)
    vp = sub.choices["video"]
    vp.add_argument("--data", default=str(DEV / "video"))
    vp.add_argument("--res", type=int, default=32)
    vp.add_argument("--frames", type=int, default=8)
    vp.add_argument("--steps", type=int, default=100)
    vp.add_argument("--lr", type=float, default=1e-5)
    vp.add_argument("--fields", nargs="+", default=["siren", "nerv"], choices=["siren", "nerv"])
    vp.add_argument("--nerv-config", default=json.dumps(NERV_SMALL))
    vp.add_argument("--clips-per-video", type=int, default=24)
    vp.add_argument("--test-clips-per-video", type=int, default=8)
    vp.add_argument("--test-videos", nargs="+", default=["carphone_pristine.mp4", "single_face.mp4"],
                    help="videos whose clips are held out (never trained on)")
    mp = sub.choices["memory"]
    mp.add_argument("--video", nargs="+", default=["16x8", "32x8", "32x16", "64x8"],
                    help="RESxFRAMES: clips of RES x RES x FRAMES")
    mp.add_argument("--audio", type=float, nargs="+", default=[0.25, 0.5, 1.0], help="durations (s) at 16 kHz")
    sp = sub.choices["step"]
    sp.add_argument("--modality", default="audio", choices=["audio", "video"])
    sp.add_argument("--field", default="siren")
    sp.add_argument("--field-config")
    sp.add_argument("--duration", type=float, default=1.0)
    sp.add_argument("--sample-rate", type=int, default=16000)
    sp.add_argument("--res", type=int, default=32)
    sp.add_argument("--frames", type=int, default=8)
    sp.add_argument("--reps", type=int, default=1)
    sp.add_argument("--warmup", type=int, default=0)
    args = parser.parse_args()
    {"audio": cmd_audio, "video": cmd_video, "memory": cmd_memory, "step": cmd_step}[args.cmd](args)


if __name__ == "__main__":
    main()
