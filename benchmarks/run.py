#!/usr/bin/env python
"""The GPU-performance suite: one command for every measurement of issue 6.

    python -m benchmarks --quick --device cpu          # ~3 minutes on a small CPU
    python -m benchmarks --device cuda                 # the full sizes, eager
    python -m benchmarks --device cuda --compile       # eager AND --compile meta-steps, side by side
    python -m benchmarks --device cuda --only meta headroom --gradient-checkpointing   # and with recomputation
    python benchmarks/run.py --device cuda --only meta --res 178 --batch 8   # one part

Measures, each configuration in a fresh subprocess (so its peak memory is its own:
CUDA's max_memory_allocated, or the process's VmHWM on CPU, see nfit.device):

* meta-step: time per outer step (loss + backward, as nfit.train does) and peak memory
  for maml (K=4) and gradncp (K=16, gamma 0.25, L=5) against resolution, batch --batch;
  achieved matmul FLOP/s, the FLOPs counted analytically by nfit.flops, and the fraction
  of --peak-tflops (default: a table of known dense TF32 peaks; none for CPUs);
  with --compile also the nfit.meta.compiled step (torch.compile; TF32 on CUDA), and with
  --gradient-checkpointing also the eager step with gradient checkpointing (inner steps and
  outer loss recomputed in the backward pass);
* memory headroom: the largest image side, and the longest video clip (frames at a fixed
  size, SIREN over (t, y, x)), at which one outer step of each algorithm fits at --batch:
  doubling, then bisection, one subprocess per probe; on a CPU within --memory-limit;
* fitting: signals per second of Adam fitting (nfit.fit.fit_adam), batch 1 to 64;
* rendering: megapixels per second of nfit.render.render_pixels (uint8), reusing
  benchmarks/bench_fit.py's bench_render;
* data loading: images decoded (and resized) per second by nfit.data.load_image.

Writes results.json, results.md and PNG plots under benchmarks/results/<date>-<device>/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "dev" / "meta_faces"
ALGOS = {"maml": {"inner_steps": 4}, "gradncp": {"inner_steps": 16, "gamma": 0.25, "boot_steps": 5}}
# Dense (no sparsity) TF32 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_TF32 = {"H100 SXM": 494.7, "H100 80GB HBM3": 494.7, "H200": 494.7, "H100 PCIe": 378.0, "H100 NVL": 417.5,
             "H100": 494.7, "A100": 156.0}
SIZES = {  # (quick CPU, full)
    "meta_res": ([16, 32], [64, 128, 178, 256, 512, 1024]),
    "meta_batch": (4, 8),
    "fit_batches": ([1, 4, 16], [1, 2, 4, 8, 16, 32, 64]),
    "fit_res": (32, 256),
    "fit_steps": (4, 16),
    "render": ([128, 256], [1024, 4096]),
    "decode": (32, 200),
    # memory headroom: image side (start, cap, step); video clips of F frames at side res (res, start, cap, step)
    "headroom_image": ((16, 512, 8), (64, 4096, 32)),
    "headroom_video": ((16, 2, 256, 2), (128, 4, 512, 2)),
    "headroom_cpu_budget": (0.5e9, None),  # bytes a CPU step may use (None: a quarter of the machine's memory)
}


def _peak(device) -> int:
    from nfit.device import peak_memory

    return peak_memory(device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ children (run in a subprocess)


def _child_device(p: dict):
    """A child's device, set up as ``nfit meta-train`` sets it up (CPU allocator; TF32 when asked)."""
    import torch

    from nfit.device import resolve_device, tune_cpu_allocator

    device = resolve_device(p["device"])
    tune_cpu_allocator(device)
    if p["tf32"] and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def _meta_setup(p: dict):
    """The pieces of one outer step: device, field, theta (leaves), strategy, coords, targets.

    ``p["shape"]``: the grid, (H, W) for an image or (T, H, W) for a video clip (SIREN
    over (t, y, x)); targets are photos from --data for images, else uniform noise
    (memory and time do not depend on the values).
    """
    import torch

    from nfit.fields import build_field
    from nfit.meta import build_strategy
    from nfit.signals import grid_coords

    device = _child_device(p)
    shape, batch = tuple(p["shape"]), p["batch"]
    field = build_field("siren", {"in_dim": len(shape), "out_dim": 3})
    theta = {k: v.to(device).requires_grad_(True) for k, v in field.init_params(torch.Generator().manual_seed(0)).items()}
    strategy = build_strategy(p["algo"], {**ALGOS[p["algo"]], "gradient_checkpointing": p.get("mode") == "checkpoint"})
    if len(shape) == 2 and shape[0] == shape[1]:
        targets = _images(p.get("data"), shape[0], batch)
    else:
        targets = torch.rand(batch, math.prod(shape), 3, generator=torch.Generator().manual_seed(0))
    return device, field, theta, strategy, grid_coords(shape, device=device), targets.to(device)


def _eager_step(field, theta, strategy, coords, targets):
    """One eager outer step as nfit.train takes it: the loss and its backward to theta."""
    loss = strategy.outer_loss(field, theta, coords, targets).loss
    loss.backward()
    for v in theta.values():
        v.grad = None
    return loss


def child_meta(p: dict) -> dict:
    from nfit.flops import meta_step_flops, siren_dims

    idle = _peak(_child_device(p))
    device, field, theta, strategy, coords, targets = _meta_setup(p)
    if p["mode"] == "compiled":
        from nfit.meta.compiled import outer_step

        step_fn = outer_step(strategy, field)
        plain = {k: v.detach() for k, v in theta.items()}

        def step():
            grads, (loss, _) = step_fn(plain, coords, targets)
            return loss
    else:
        def step():
            return _eager_step(field, theta, strategy, coords, targets)

    times, first = [], None
    for i in range(p["warmup"] + p["reps"]):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        dt = time.perf_counter() - t
        if i == 0:
            first = dt  # includes compilation with --compile
        if i >= p["warmup"]:
            times.append(dt)
    med = statistics.median(times)
    flops = meta_step_flops(p["algo"], siren_dims(), coords.shape[0], p["batch"], strategy.config)
    return {"step_s": round(med, 5), "steps_per_s": round(1 / med, 3), "first_step_s": round(first, 3),
            "step_s_all": [round(t, 5) for t in times], "matmul_flops": flops, "tflops_per_s": flops / med / 1e12,
            "peak_bytes": _peak(device), "idle_bytes": idle, **ALGOS[p["algo"]]}


def _out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, (torch.OutOfMemoryError, MemoryError)) or "can't allocate memory" in str(err)


def child_headroom(p: dict) -> dict:
    """Does one outer step (loss and backward) at ``p["shape"]`` fit in memory? On CUDA: does it
    run without running out. On a CPU, which would swap rather than fail: does the step's own
    peak (resident high-water mark over the set-up's) stay within ``p["memory_limit"]`` bytes."""
    try:
        device, field, theta, strategy, coords, targets = _meta_setup(p)
        if device.type == "cpu":  # a tiny step first: the thread pools' own memory is not the step's
            _eager_step(field, theta, strategy, *_meta_setup({**p, "shape": [4] * coords.shape[1]})[-2:])
        base = _peak(device)
        _eager_step(field, theta, strategy, coords, targets)
        _sync(device)
    except Exception as err:  # noqa: BLE001  only running out of memory is an answer; anything else is a failure
        if not _out_of_memory(err):
            raise
        return {"fits": False}
    peak = _peak(device)
    fits = device.type != "cpu" or peak - base <= p["memory_limit"]
    return {"fits": fits, "peak_bytes": peak, "step_bytes": peak - base}


def largest_fitting(fits, start: int, cap: int, step: int) -> tuple[int | None, int | None, list[tuple[int, bool]]]:
    """The largest size up to ``cap`` for which ``fits(size)`` holds, assuming it holds below
    some threshold: doubling from ``start`` until a size fails, then bisection over the
    multiples of ``step`` in between.

    Returns (the largest size that fit, or None when ``start`` failed; the smallest that
    failed, or None when ``cap`` fit; every probe in order). No multiple of ``step`` lies
    strictly between the two sizes returned.
    """
    probes: list[tuple[int, bool]] = []

    def probe(size: int) -> bool:
        probes.append((size, bool(fits(size))))
        return probes[-1][1]

    if not probe(start):
        return None, start, probes
    good, bad = start, None
    while bad is None:
        size = min(good * 2, cap)
        if size <= good:
            return good, None, probes
        if probe(size):
            good = size
        else:
            bad = size
    while True:
        first, last = good // step + 1, (bad - 1) // step  # the multiples of step strictly inside
        if first > last:
            return good, bad, probes
        mid = min(max(round((good + bad) / 2 / step), first), last) * step
        if probe(mid):
            good = mid
        else:
            bad = mid


def _images(data: str | None, res: int, batch: int):
    import torch

    if data and Path(data).is_dir():
        from nfit.data import load_image, scan_folder

        files = scan_folder(Path(data))
        if files:
            files = (files * batch)[:batch]
            return torch.stack([load_image(f, res, 3) for f in files]).reshape(batch, -1, 3)
    return torch.rand(batch, res * res, 3, generator=torch.Generator().manual_seed(0))


def child_fit(p: dict) -> dict:
    import torch

    from nfit.config import FitConfig
    from nfit.fields import build_field
    from nfit.fit import fit_adam
    from nfit.flops import fit_step_flops, siren_dims

    device = _child_device(p)
    field = build_field("siren", {"in_dim": 2, "out_dim": 3})
    init = field.init_params(torch.Generator().manual_seed(0))
    res, batch = p["res"], p["batch"]
    targets = _images(p["data"], res, batch).to(device)
    config = FitConfig(steps=p["steps"])
    fit_adam(field, init, targets, (res, res), FitConfig(steps=1))  # warm-up
    times = []
    for _ in range(p["reps"]):
        _sync(device)
        t = time.perf_counter()
        fit_adam(field, init, targets, (res, res), config)
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    flops = p["steps"] * fit_step_flops(siren_dims(), res * res, batch)
    return {"seconds": round(med, 4), "signals_per_s": round(batch / med, 3), "tflops_per_s": flops / med / 1e12,
            "peak_bytes": _peak(device)}


def child_render(p: dict) -> dict:
    import numpy as np
    import torch

    import nfit
    from benchmarks.bench_fit import bench_render
    from nfit.device import resolve_device

    device = resolve_device(p["device"])
    values = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    nf = nfit.fit(nfit.Signal(modality="image", values=values, bit_depth=8, source=Path("noise.png")), steps=1,
                  device=str(device))  # a real FittedField; its values do not change the cost
    out = []
    for size in p["sizes"]:
        r = bench_render(nf, size, p["reps"], device)
        out.append({"size": size, "mpix_per_s": round(r["mpix_per_s"], 3), "seconds_median": round(r["seconds_median"], 4)})
    return {"renders": out, "peak_bytes": _peak(device), "torch_threads": torch.get_num_threads()}


def child_decode(p: dict) -> dict:
    from nfit.data import load_image, scan_folder

    files = (scan_folder(Path(p["data"])) * 10)[: p["count"]]
    t = time.perf_counter()
    for f in files:
        load_image(f, p["res"], 3)
    dt = time.perf_counter() - t
    return {"images": len(files), "seconds": round(dt, 3), "images_per_s": round(len(files) / dt, 2), "res": p["res"],
            "processes": 1}


CHILDREN = {"meta": child_meta, "fit": child_fit, "render": child_render, "decode": child_decode,
            "headroom": child_headroom}
PARTS = list(CHILDREN)  # what a run without --only measures


def run_child(kind: str, params: dict, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", kind, json.dumps(params)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {kind} {params}: FAILED: {tail}", flush=True)
        return {"kind": kind, **params, "error": tail}
    line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
    return {"kind": kind, **params, **json.loads(line[7:]), "wall_s": round(wall, 2)}


# ------------------------------------------------------------------ the suite


def peak_tflops(args, device_name: str) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "given (--peak-tflops)"
    for key, value in PEAK_TF32.items():
        if key in device_name:
            return value, f"dense TF32 of {key} (table in benchmarks/run.py)"
    return None, "unknown for this device: fraction omitted"


def machine(device: str) -> dict:
    import platform

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": os.cpu_count(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for a CPU (~3 minutes)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    ap.add_argument("--res", type=int, nargs="+", help="meta-step resolutions (default: by --quick)")
    ap.add_argument("--batch", type=int, help="meta-step and headroom batch (default: 4 quick, 8 full)")
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    ap.add_argument("--compile", action="store_true", help="also time the --compile meta-step (TF32 on CUDA)")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="also the meta-step with gradient checkpointing (time, memory and headroom)")
    ap.add_argument("--signals", nargs="+", default=["image", "video"], choices=["image", "video"],
                    help="headroom: which signals to grow")
    ap.add_argument("--memory-limit", type=float, default=None,
                    help="headroom on a CPU: GB one step may use (default 0.5 quick, else a quarter of the RAM)")
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls for the eager runs too (CUDA)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions (default 2 quick, 5 full)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of each child")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="images for targets and decoding")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<date>-<device>)")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print("RESULT " + json.dumps(CHILDREN[args._child[0]](json.loads(args._child[1]))), flush=True)
        return 0

    from nfit.device import resolve_device

    device = resolve_device(args.device).type
    q = 0 if args.quick else 1
    size = {k: v[q] for k, v in SIZES.items()}
    reps = args.reps or (2 if args.quick else 5)
    info = machine(device)
    peak, peak_source = peak_tflops(args, info.get("gpu", "cpu") if device == "cuda" else "cpu")
    out = args.out or ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{device}{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    parts = args.only or PARTS
    records: list[dict] = []
    common = {"device": device, "data": args.data, "tf32": args.tf32}
    t0 = time.perf_counter()
    modes = ["eager"] + ["compiled"] * args.compile + ["checkpoint"] * args.gradient_checkpointing
    batch = args.batch or size["meta_batch"]
    if "meta" in parts:
        for res in args.res or size["meta_res"]:
            for algo in args.algos:
                for mode in modes:
                    print(f"meta-step {algo} {res}x{res} batch {batch} {mode} ...", flush=True)
                    r = run_child("meta", {**common, "algo": algo, "shape": [res, res], "res": res, "batch": batch,
                                           "mode": mode, "reps": reps, "warmup": 2 if mode == "compiled" else 1},
                                  args.threads)
                    if peak and "tflops_per_s" in r:
                        r["fraction_of_peak"] = r["tflops_per_s"] / peak
                    records.append(r)
    if "headroom" in parts:
        budget = args.memory_limit * 1e9 if args.memory_limit else size["headroom_cpu_budget"] or _quarter_ram()
        records += headroom(common, args.signals, args.algos, [m for m in modes if m != "compiled"], batch, size,
                            int(budget), args.threads)
    if "fit" in parts:
        for batch in size["fit_batches"]:
            print(f"fitting {size['fit_res']}x{size['fit_res']} x{size['fit_steps']} steps, batch {batch} ...", flush=True)
            records.append(run_child("fit", {**common, "res": size["fit_res"], "batch": batch, "steps": size["fit_steps"],
                                             "reps": 1 if args.quick else 3}, args.threads))
    if "render" in parts:
        print(f"rendering {size['render']} ...", flush=True)
        records.append(run_child("render", {**common, "sizes": size["render"], "reps": reps}, args.threads))
    if "decode" in parts:
        print(f"decoding {size['decode']} images ...", flush=True)
        records.append(run_child("decode", {**common, "count": size["decode"], "res": 178 if not args.quick else 64},
                                 args.threads))
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([Path(sys.executable).name] + sys.argv),
              "quick": args.quick, "machine": info, "peak_tflops": peak, "peak_source": peak_source,
              "seconds": round(time.perf_counter() - t0, 1), "records": records}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "results.md").write_text(md + "\n")
    plots(result, out)
    print("\n" + md + f"\n\nwrote {out}/results.json, results.md and plots ({result['seconds']} s)")
    return 0


def _quarter_ram() -> int:  # a doubling probe may need 4x the last that fitted: keep it in memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def headroom(common: dict, signals: list[str], algos: list[str], modes: list[str], batch: int, size: dict,
             budget: int, threads: int) -> list[dict]:
    """The largest image side, and the longest video clip at a fixed frame size, that one
    outer step at ``batch`` fits in memory, per algorithm and mode (one subprocess per probe)."""
    image_start, image_cap, image_step = size["headroom_image"]
    video_res, video_start, video_cap, video_step = size["headroom_video"]
    targets = {  # what grows: (shape of a size, start, cap, step, unit)
        "image": (lambda n: [n, n], image_start, image_cap, image_step, "side (px)"),
        "video": (lambda n: [n, video_res, video_res], video_start, video_cap, video_step, f"frames at {video_res}x{video_res}"),
    }
    records = []
    for target in signals:
        shape, start, cap, step, unit = targets[target]
        for algo in algos:
            for mode in modes:
                peaks = {}

                def fits(n: int) -> bool:
                    r = run_child("headroom", {**common, "algo": algo, "shape": shape(n), "batch": batch, "mode": mode,
                                               "memory_limit": budget}, threads)
                    if "error" in r:
                        raise RuntimeError(f"headroom probe {target} {n} failed: {r['error']}")
                    peaks[n] = r.get("peak_bytes")
                    return r["fits"]

                print(f"headroom {target} {algo} batch {batch} {mode} ...", flush=True)
                largest, failed, probes = largest_fitting(fits, start, cap, step)
                records.append({"kind": "headroom", "target": target, "unit": unit, "algo": algo, "mode": mode,
                                "batch": batch, "largest": largest, "smallest_failing": failed, "cap": cap,
                                "largest_peak_bytes": peaks.get(largest), "probes": probes,
                                "budget_bytes": budget if common["device"] == "cpu" else None})
    return records


def _gb(n) -> str:
    return f"{n / 1e9:.2f}" if n else "-"


def markdown(result: dict) -> str:
    recs = result["records"]
    m = result["machine"]
    lines = [f"Device: {m.get('gpu', m['device'])}; torch {m['torch']}; {m['cpus']} CPUs; peak for the fraction: "
             f"{result['peak_tflops'] or '-'} TFLOP/s ({result['peak_source']}).", ""]
    meta = [r for r in recs if r["kind"] == "meta"]
    if meta:
        lines += ["| algo | res | batch | mode | step (s) | steps/s | first step (s) | matmul GFLOP/step | TFLOP/s | of peak | peak mem (GB) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in meta:
            mode = r["mode"] + (" tf32" if r["tf32"] else "")
            if "error" in r:
                lines.append(f"| {r['algo']} | {r['res']} | {r['batch']} | {mode} | error: {r['error'][:80]} |||||||")
                continue
            frac = f"{100 * r['fraction_of_peak']:.1f}%" if "fraction_of_peak" in r else "-"
            lines.append(f"| {r['algo']} | {r['res']} | {r['batch']} | {mode} | {r['step_s']:.4f} | {r['steps_per_s']:.2f} | "
                         f"{r['first_step_s']:.2f} | {r['matmul_flops'] / 1e9:.2f} | {r['tflops_per_s']:.4f} | {frac} | "
                         f"{_gb(r['peak_bytes'])} |")
        lines.append("")
    fit = [r for r in recs if r["kind"] == "fit"]
    if fit:
        lines += ["| fitting res | steps | batch | seconds | signals/s | TFLOP/s | peak mem (GB) |", "|---|---|---|---|---|---|---|"]
        for r in fit:
            if "error" in r:
                lines.append(f"| {r['res']} | {r['steps']} | {r['batch']} | error: {r['error'][:80]} ||||")
                continue
            lines.append(f"| {r['res']} | {r['steps']} | {r['batch']} | {r['seconds']:.3f} | {r['signals_per_s']:.2f} | "
                         f"{r['tflops_per_s']:.4f} | {_gb(r['peak_bytes'])} |")
        lines.append("")
    room = [r for r in recs if r["kind"] == "headroom"]
    if room:
        budget = room[0]["budget_bytes"]
        lines += [f"Memory headroom at batch {room[0]['batch']}: one outer step, loss and backward"
                  + (f", within {_gb(budget)} GB of CPU memory" if budget else "") + ".", "",
                  "| signal | algo | mode | largest that fits | smallest that failed | its peak mem (GB) |",
                  "|---|---|---|---|---|---|"]
        for r in room:
            failed = r["smallest_failing"] if r["smallest_failing"] is not None else f"none up to {r['cap']}"
            lines.append(f"| {r['target']}: {r['unit']} | {r['algo']} | {r['mode']} | {r['largest']} | {failed} | "
                         f"{_gb(r['largest_peak_bytes'])} |")
        lines.append("")
    for r in recs:
        if r["kind"] == "render" and "renders" in r:
            lines += ["| render (uint8) | MP/s | seconds |", "|---|---|---|"]
            lines += [f"| {x['size']}x{x['size']} | {x['mpix_per_s']:.3f} | {x['seconds_median']:.3f} |" for x in r["renders"]]
            lines.append("")
        if r["kind"] == "decode" and "images_per_s" in r:
            lines += ["| decoding | images/s |", "|---|---|",
                      f"| {r['images']} PNGs -> {r['res']}x{r['res']}, 1 process | {r['images_per_s']:.1f} |", ""]
    return "\n".join(lines).rstrip()


def plots(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = [r for r in result["records"] if r["kind"] == "meta" and "error" not in r]
    if meta:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for algo in ALGOS:
            for mode in ("eager", "compiled", "checkpoint"):
                rs = sorted((r for r in meta if r["algo"] == algo and r["mode"] == mode), key=lambda r: r["res"])
                if not rs:
                    continue
                label = f"{algo} {mode}"
                x = [r["res"] for r in rs]
                axes[0].plot(x, [r["step_s"] for r in rs], "o-", label=label)
                axes[1].plot(x, [r["peak_bytes"] / 1e9 for r in rs], "o-", label=label)
                axes[2].plot(x, [r["tflops_per_s"] for r in rs], "o-", label=label)
        for ax, title in zip(axes, ("seconds per outer step", "peak memory (GB)", "matmul TFLOP/s")):
            ax.set_xlabel("resolution (side)")
            ax.set_title(title)
            ax.set_xscale("log", base=2)
            ax.legend()
        axes[0].set_yscale("log")
        if result["peak_tflops"]:
            axes[2].axhline(result["peak_tflops"], color="grey", ls="--", label="peak")
        fig.tight_layout()
        fig.savefig(out / "meta_step.png", dpi=100)
        plt.close(fig)
    fit = [r for r in result["records"] if r["kind"] == "fit" and "error" not in r]
    if fit:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r["batch"] for r in fit], [r["signals_per_s"] for r in fit], "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (signals fitted together)")
        ax.set_ylabel("signals per second")
        ax.set_title(f"fitting {fit[0]['res']}x{fit[0]['res']}, {fit[0]['steps']} Adam steps")
        fig.tight_layout()
        fig.savefig(out / "fit_throughput.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
