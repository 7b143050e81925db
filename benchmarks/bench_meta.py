#!/usr/bin/env python
"""Meta-learning benchmarks: outer-step cost, and validation PSNR against outer steps.

    # (a) time per outer step and peak memory, maml K=4 and gradncp K=16 gamma=0.25, batch 8
    PYTHONPATH=. python benchmarks/bench_meta.py speed --res 32 64 128 178 --device cpu
    # (b) validation PSNR (K_test=16, re-scaled) against outer steps: random init (step 0), maml, gradncp
    PYTHONPATH=. python benchmarks/bench_meta.py curves --data ../shared/datasets/dev/meta_faces --res 64 --steps 1000
    # (c) the reference's quality setting: 200 random 32x32 crops of photos, 150 outer steps,
    #     evaluated on crops of other photos
    PYTHONPATH=. python benchmarks/bench_meta.py crops --data ../shared/datasets/dev/images --steps 150

Every configuration of ``speed`` runs in a fresh subprocess, so its peak memory is its
own: CUDA's max_memory_allocated, or on CPU the process's VmHWM (peak resident set,
which includes the ~0.3 GB of the Python + torch process itself; the idle figure is
reported beside it; on CPU the allocator is tuned as ``nfit meta-train`` tunes it, see
``nfit.device.tune_cpu_allocator``). Times are medians of ``--reps`` steps after
``--warmup`` uncounted ones.
Results print as JSON lines and, with ``--json FILE``, are appended there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "dev"
ALGOS = {"maml": {"inner_steps": 4}, "gradncp": {"inner_steps": 16, "gamma": 0.25}}


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def emit(record: dict, path: str | None) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# ------------------------------------------------------------------ (a) step cost


def _one_config(algo: str, res: int, batch: int, reps: int, device_name: str, data: str | None, threads: int,
                micro: int, warmup: int) -> dict:
    """Runs inside the subprocess."""
    import torch

    from nfit.device import peak_memory, resolve_device, tune_cpu_allocator
    from nfit.fields import build_field
    from nfit.meta import build_strategy
    from nfit.signals import grid_coords

    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    tune_cpu_allocator(device)  # as nfit meta-train does
    idle = peak_memory(device)
    field = build_field("siren", {"in_dim": 2, "out_dim": 3})
    theta = {k: v.to(device).requires_grad_(True) for k, v in field.init_params(torch.Generator().manual_seed(0)).items()}
    strategy = build_strategy(algo, ALGOS[algo])
    if data:
        from nfit.data import load_image, scan_folder

        files = scan_folder(Path(data))[:batch]
        targets = torch.stack([load_image(f, res, 3) for f in files]).reshape(len(files), -1, 3)
    else:
        targets = torch.rand(batch, res * res, 3, generator=torch.Generator().manual_seed(0))
    targets = targets.to(device)
    coords = grid_coords((res, res), device=device)
    times = []
    for i in range(reps + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for lo in range(0, batch, micro):  # as nfit.train does: same step, memory of the micro-batch
            part = targets[lo : lo + micro]
            (strategy.outer_loss(field, theta, coords, part).loss * (part.shape[0] / batch)).backward()
        for v in theta.values():
            v.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:  # warm-up steps fill allocators and caches; not counted
            times.append(time.perf_counter() - t)
    return {"algo": algo, **ALGOS[algo], "res": res, "batch": batch, "micro_batch": micro, "device": str(device),
            "step_s_median": round(statistics.median(times), 4), "step_s": [round(x, 4) for x in times],
            "peak_bytes": peak_memory(device), "idle_bytes": idle}


def cmd_speed(args) -> None:
    configs = [(res, algo, micro) for res in args.res for algo in args.algos for micro in args.micro or [args.batch]]
    for res, algo, micro in configs:
        cmd = [sys.executable, __file__, "_one", algo, str(res), str(args.batch), str(args.reps), args.device,
               args.data or "", str(args.threads), str(micro), str(args.warmup)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode:
            emit({"algo": algo, "res": res, "micro_batch": micro, "error": proc.stderr.strip().splitlines()[-1:]},
                 args.json)
            continue
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        emit({"bench": "meta_step", **record, "machine": machine()}, args.json)


# ------------------------------------------------------------------ (b) curves


def _train(data: Path, run: Path, algo: str, res: int, steps: int, val_every: int, device: str, val: Path | None = None,
           batch: int = 8, workers: int = 4) -> list[dict]:
    from nfit.config import DataConfig, TrainConfig
    from nfit.train import LOG_FILE, meta_train

    train = TrainConfig(algo=algo, steps=steps, batch_size=batch, val_every=val_every, ckpt_every=steps, log_every=10,
                        device=device)
    meta_train(data, run, train, DataConfig(res=res, workers=workers, channels=3), algo_options=ALGOS[algo],
               val_dir=val)
    rows = [json.loads(x) for x in (run / LOG_FILE).read_text().splitlines()]
    return rows


def cmd_curves(args) -> None:
    for data in args.data:
        for res in args.res:
            for algo in args.algos:
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    rows = _train(Path(data), Path(tmp) / "run", algo, res, args.steps, args.val_every, args.device)
                    seconds = time.perf_counter() - t
                val = {r["step"]: r["val_psnr"] for r in rows if r["kind"] == "val"}
                train = [r for r in rows if r["kind"] == "train"]
                emit({"bench": "val_curve", "data": Path(data).name, "res": res, "algo": algo, **ALGOS[algo],
                      "steps": args.steps, "val_psnr": val, "random_init_val_psnr": val.get(0),
                      "train_steps_per_s": statistics.median(r["steps_per_s"] for r in train),
                      "peak_bytes": max(r["peak_memory"] for r in train), "seconds": round(seconds, 1),
                      "machine": machine()}, args.json)


# ------------------------------------------------------------------ (c) crops


def make_crops(photos: list[Path], count: int, size: int, out: Path, seed: int) -> None:
    """Random square crops at several scales (side 1x to 4x ``size``), resized to ``size``."""
    import numpy as np
    import torch.nn.functional as F

    from nfit.data import load_image
    from nfit.signals.image import quantize, write_image

    rng = random.Random(seed)
    out.mkdir(parents=True)
    images = {}
    for i in range(count):
        path = rng.choice(photos)
        if path not in images:
            img = load_image(path, 512, 3)  # shorter side 512, square: crops come from a common scale
            images[path] = img
        img = images[path]
        side = rng.randint(size, 4 * size)
        y, x = rng.randint(0, img.shape[0] - side), rng.randint(0, img.shape[1] - side)
        crop = img[y : y + side, x : x + side].permute(2, 0, 1)[None]
        crop = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        pixels = quantize(crop[0].permute(1, 2, 0).clamp(0, 1).numpy(), 8)
        write_image(out / f"crop_{i:04d}.png", np.ascontiguousarray(pixels), "png")


def cmd_crops(args) -> None:
    from nfit.config import AdaptConfig
    from nfit.data import scan_folder
    from nfit.evaluation import evaluate_folder

    photos = scan_folder(Path(args.data))
    rng = random.Random(args.seed)
    test_photos = sorted(rng.sample(photos, max(1, len(photos) // 4)))
    train_photos = [p for p in photos if p not in test_photos]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_crops(train_photos, args.train_crops, args.res, tmp / "train", args.seed)
        make_crops(test_photos, args.test_crops, args.res, tmp / "test", args.seed + 1)
        results = {}
        config = AdaptConfig(steps=16, batch_size=50, device=args.device)
        rep = evaluate_folder("random", tmp / "test", config, res=args.res)
        results["random"] = rep.results
        for algo in args.algos:
            t = time.perf_counter()
            rows = _train(tmp / "train", tmp / algo, algo, args.res, args.steps, args.steps, args.device,
                          val=tmp / "test", workers=2)
            rep = evaluate_folder(tmp / algo / "init.safetensors", tmp / "test", config)
            results[algo] = rep.results
            results[algo]["train_seconds"] = round(time.perf_counter() - t, 1)
            results[algo]["peak_bytes"] = max(r["peak_memory"] for r in rows if r["kind"] == "train")
        summary = {name: {"rescaled_k16": r["rescaled"]["psnr_mean"][16], "plain_k4": r["plain"]["psnr_mean"][4],
                          "plain_k16": r["plain"]["psnr_mean"][16]} for name, r in results.items()}
        emit({"bench": "crops", "train_photos": [p.name for p in train_photos], "test_photos": [p.name for p in test_photos],
              "train_crops": args.train_crops, "test_crops": args.test_crops, "res": args.res, "steps": args.steps,
              "summary": summary, "results": results, "machine": machine()}, args.json)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        algo, res, batch, reps, device, data, threads, micro, warmup = sys.argv[2:11]
        print(json.dumps(_one_config(algo, int(res), int(batch), int(reps), device, data or None, int(threads),
                                     int(micro), int(warmup))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("speed", "curves", "crops"):
        p = sub.add_parser(name)
        p.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
        p.add_argument("--device", default="auto")
        p.add_argument("--json", help="append results (JSON lines) to this file")
    sp = sub.choices["speed"]
    sp.add_argument("--res", type=int, nargs="+", default=[32, 64, 128, 178])
    sp.add_argument("--batch", type=int, default=8)
    sp.add_argument("--reps", type=int, default=3)
    sp.add_argument("--warmup", type=int, default=1, help="uncounted steps before the timed ones")
    sp.add_argument("--threads", type=int, default=2)
    sp.add_argument("--micro", type=int, nargs="+", help="micro-batch sizes to compare (default: the whole batch)")
    sp.add_argument("--data", default=str(DEFAULT_DATA / "meta_faces"), help="images for the targets ('' for random)")
    cp = sub.choices["curves"]
    cp.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA / "meta_faces"), str(DEFAULT_DATA / "meta_images")])
    cp.add_argument("--res", type=int, nargs="+", default=[64, 128])
    cp.add_argument("--steps", type=int, default=1000)
    cp.add_argument("--val-every", type=int, default=100)
    xp = sub.choices["crops"]
    xp.add_argument("--data", default=str(DEFAULT_DATA / "images"))
    xp.add_argument("--res", type=int, default=32)
    xp.add_argument("--steps", type=int, default=150)
    xp.add_argument("--train-crops", type=int, default=200)
    xp.add_argument("--test-crops", type=int, default=100)
    xp.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"speed": cmd_speed, "curves": cmd_curves, "crops": cmd_crops}[args.cmd](args)


if __name__ == "__main__":
    main()
