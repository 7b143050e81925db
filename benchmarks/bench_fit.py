#!/usr/bin/env python
"""Fitting and rendering benchmark for nfit's default SIREN field.

Measures, on one 256x256 photo (centre square crop of ``--image``, resized with
Pillow LANCZOS):

* time per Adam fitting step (median over all steps of one run; the interval
  between two consecutive progress callbacks is exactly one full step:
  optimiser update + zero_grad + forward/backward over the whole grid);
* PSNR after 100, 300 and ``--steps`` (default 1000) Adam steps, from ONE run.
  ``StepInfo.psnr`` at step t is the PSNR of the parameters *before* update t,
  so the PSNR after k updates is read at the callback of step k + 1; the final
  figure is ``nf.summary["psnr"]``, computed after the last update;
* render throughput (megapixels per second, ``nfit.render.render_pixels`` to a
  uint8 array) at 1024x1024 and 4096x4096 with the fitted field;
* peak resident memory of a fresh subprocess that loads the fitted field and
  renders it at 8192x8192 into a uint8 array. On Linux the figure is the
  child's ``VmHWM`` (/proc/self/status), because ``ru_maxrss`` survives
  fork + exec: a child's ``ru_maxrss`` starts at its parent's peak RSS (~1 GB
  here after fitting), so it cannot isolate the render. ``ru_maxrss`` is
  reported as well. On CPU the 8192 render of a width-256 field takes long;
  ``--memory-width auto`` (default) uses the fitted field when the render is
  predicted (from the 4096 timing) to take at most ``--memory-budget`` seconds,
  else a randomly initialised SIREN of width 64 and the same depth (the output
  array is the same; the per-chunk activations are 4x smaller), and says so.

Usage (from the repository root):

    PYTHONPATH=. python benchmarks/bench_fit.py --device cpu
    PYTHONPATH=. python benchmarks/bench_fit.py --quick            # smoke run
    PYTHONPATH=. python benchmarks/bench_fit.py --json out.json --save-field /tmp/f.nf
    PYTHONPATH=. python benchmarks/bench_fit.py --memory-only /tmp/f.nf   # just the 8192 check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable without PYTHONPATH
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from nfit.device import peak_resident_bytes  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "dev" / "images"
FIT_SIZE = 256
PSNR_AT = (100, 300, 1000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def load_photo(path: Path, size: int = FIT_SIZE) -> np.ndarray:
    """Centre square crop, resized to size x size with LANCZOS: float32 [H, W, 3] in [0, 1]."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        return np.asarray(im, dtype=np.float32) / 255.0


def bench_fit(values: np.ndarray, steps: int, lr: float, device: torch.device, name: str):
    import nfit
    from nfit.fields import field_config_dict

    signal = nfit.Signal(modality="image", values=values, bit_depth=8, source=Path(name))
    times: list[float] = []
    psnr_before: dict[int, float] = {}  # step -> PSNR of the parameters before update `step`
    state = {"last": None}

    def factory(label, n):
        def on_step(info):
            _sync(device)
            now = time.perf_counter()
            if state["last"] is not None:
                times.append(now - state["last"])
            state["last"] = now
            psnr_before[info.step] = info.psnr
            if info.step % 100 == 0 or info.step == 1:
                print(f"  step {info.step:5d}/{n}  psnr {info.psnr:6.2f} dB  loss {info.loss:.3e}", flush=True)

        return on_step

    nf = nfit.fit(signal, steps=steps, lr=lr, device=str(device), progress=factory)
    psnr_after = {k: psnr_before[k + 1] for k in PSNR_AT if k < steps and k + 1 in psnr_before}
    psnr_after[steps] = float(nf.summary["psnr"])
    return nf, {
        "steps": steps,
        "lr": lr,
        "params": nf.n_params,
        "field": {"name": nf.field_name, **field_config_dict(nf.field)},
        "step_seconds_median": statistics.median(times) if times else None,
        "step_seconds_min": min(times) if times else None,
        "step_seconds_max": max(times) if times else None,
        "step_intervals": len(times),
        "fit_seconds_total": float(nf.summary["seconds"]),
        "psnr_after": {str(k): round(v, 3) for k, v in sorted(psnr_after.items())},
        "ssim_final": nf.summary.get("ssim"),
        # PSNR after k updates for k = 0 .. steps - 1 (the callback of step k + 1), then the final figure.
        "psnr_best": round(max([*psnr_before.values(), psnr_after[steps]]), 3),
        "psnr_trace": [round(psnr_before[k], 3) for k in sorted(psnr_before)] + [round(psnr_after[steps], 3)],
    }


def bench_render(nf, size: int, repeats: int, device: torch.device) -> dict:
    from nfit.render import render_pixels

    if device.type == "cuda":  # warm-up: kernels, allocator
        render_pixels(nf, (256, 256), 8, device=device)
        _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pixels = render_pixels(nf, (size, size), 8, device=device)
        _sync(device)
        times.append(time.perf_counter() - t0)
        assert pixels.shape == (size, size, nf.channels) and pixels.dtype == np.uint8
        del pixels
    med = statistics.median(times)
    return {
        "size": size,
        "repeats": repeats,
        "seconds": [round(t, 3) for t in times],
        "seconds_median": med,
        "mpix_per_s": size * size / med / 1e6,
    }


def memory_child(field_path: str, size: int, device: str, threads: int) -> None:
    """Subprocess mode: load a field, render size x size to uint8, print JSON with peak RSS."""
    torch.set_num_threads(threads)
    import nfit
    from nfit.fields import field_config_dict
    from nfit.render import render_pixels

    nf = nfit.load(field_path)
    dev = torch.device(device)
    before = peak_resident_bytes()
    before_ru = _maxrss_bytes()
    t0 = time.perf_counter()
    pixels = render_pixels(nf, (size, size), 8, device=dev)
    _sync(dev)
    seconds = time.perf_counter() - t0
    checksum = int(pixels[:: max(1, size // 64), :: max(1, size // 64)].sum())  # touch the result
    peak = peak_resident_bytes()
    out = {
        "size": size,
        "field": {"name": nf.field_name, **field_config_dict(nf.field)},
        "seconds": seconds,
        "output_bytes": int(pixels.nbytes),
        "peak_rss_source": "VmHWM" if peak is not None else "ru_maxrss",
        "peak_rss_before_render_bytes": before if before is not None else before_ru,
        "peak_rss_bytes": peak if peak is not None else _maxrss_bytes(),
        "ru_maxrss_before_render_bytes": before_ru,
        "ru_maxrss_bytes": _maxrss_bytes(),
        "checksum": checksum,
    }
    if dev.type == "cuda":
        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    print("RESULT " + json.dumps(out), flush=True)


def narrow_field(nf, width: int):
    """A randomly initialised SIREN like ``nf`` but of another width (for the memory check)."""
    import dataclasses

    from nfit.fields import build_field, field_config_dict

    config = dict(nf.field_config, width=width)
    net = build_field(nf.field_name, config)
    params = net.init_params(torch.Generator().manual_seed(0))
    summary = {"note": f"random init, width {width}, for the memory check only"}
    assert field_config_dict(net)["width"] == width
    return dataclasses.replace(nf, field_config=config, params=params, summary=summary)


def bench_memory(nf, size: int, device: torch.device, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "field.nf"
        nf.save(path)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", str(path),
               "--_memory-size", str(size), "--device", device.type, "--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess failed ({proc.returncode}):\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    out["subprocess_wall_seconds"] = wall
    out["mpix_per_s"] = size * size / out["seconds"] / 1e6
    return out


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def markdown(res: dict) -> str:
    if "fit" not in res:  # --memory-only
        m = res["memory"]
        return (f"| Measure | Value |\n|---|---|\n| Render {m['size']}x{m['size']} uint8 | {m['seconds']:.1f} s, "
                f"{m['mpix_per_s']:.3f} MP/s |\n| Peak RSS ({m['peak_rss_source']}) | {_gb(m['peak_rss_bytes'])} "
                f"(after imports + load: {_gb(m['peak_rss_before_render_bytes'])}) |")
    f, r, m = res["fit"], res["render"], res.get("memory")
    psnr = f["psnr_after"]
    rows = [
        ("Device", res["machine"]["device"] + (f" ({res['machine']['gpu']})" if "gpu" in res["machine"] else "")),
        ("Field", f"SIREN width {f['field'].get('width')}, depth {f['field'].get('depth')} ({f['params']:,} params)"),
        ("Fit image", f"{res['image']} centre crop, {FIT_SIZE}x{FIT_SIZE} (LANCZOS)"),
        ("Time per fitting step (median)",
         f"{f['step_seconds_median'] * 1e3:.1f} ms (min {f['step_seconds_min'] * 1e3:.1f}, "
         f"max {f['step_seconds_max'] * 1e3:.1f}, {f['step_intervals']} steps)"),
        (f"Fit total ({f['steps']} steps)", f"{f['fit_seconds_total']:.1f} s"),
    ]
    for k, v in psnr.items():
        rows.append((f"PSNR after {k} Adam steps (lr {f['lr']:g})", f"{v:.2f} dB"))
    rows.append(("Best PSNR over the run (any step)", f"{f['psnr_best']:.2f} dB"))
    if f.get("ssim_final") is not None:
        rows.append((f"SSIM after {f['steps']} steps", f"{f['ssim_final']:.4f}"))
    for x in r:
        rows.append((f"Render {x['size']}x{x['size']} uint8",
                     f"{x['mpix_per_s']:.3f} MP/s ({x['seconds_median']:.2f} s, median of {x['repeats']})"))
    if m is not None:
        s = m["size"]
        which = "fitted field" if m["fitted_field"] else f"random-init width-{m['field']['width']} SIREN"
        rows.append((f"Render {s}x{s} uint8 (subprocess, {which})",
                     f"{m['seconds']:.1f} s, {m['mpix_per_s']:.3f} MP/s"))
        rows.append((f"Peak RSS of that subprocess ({m['peak_rss_source']})",
                     f"{_gb(m['peak_rss_bytes'])} (after imports + load: {_gb(m['peak_rss_before_render_bytes'])}; "
                     f"output array {_gb(m['output_bytes'])})"))
        if "cuda_max_allocated_bytes" in m:
            rows.append(("Peak CUDA memory allocated", _gb(m["cuda_max_allocated_bytes"])))
    lines = ["| Measure | Value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images (default: %(default)s)")
    p.add_argument("--image", default="astronaut.png", help="file name in --data, or a path (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default 1000; 20 with --quick)")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: nfit's, 1e-3)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default: %(default)s)")
    p.add_argument("--render-repeats", type=int, default=None,
                   help="repeats at 1024 (default 3); 4096 runs once on CPU, 3 times on CUDA")
    p.add_argument("--memory-size", type=int, default=8192, help="side of the subprocess memory render")
    p.add_argument("--memory-width", default="auto",
                   help="field for the memory render: auto, fitted, or a width for a random-init SIREN "
                        "(default auto: fitted if predicted to take <= --memory-budget s, else width 64)")
    p.add_argument("--memory-budget", type=float, default=300.0, help="seconds (default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the subprocess memory render")
    p.add_argument("--memory-only", type=Path, default=None, metavar="FIELD",
                   help="only run the subprocess memory render of a saved .nf field")
    p.add_argument("--save-field", type=Path, default=None, metavar="NF", help="save the fitted field here")
    p.add_argument("--quick", action="store_true", help="smoke run: 20 steps, 128/256 renders, 512 memory render")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_memory-size", dest="memory_child_size", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_child_size, args.device, args.threads)
        return 0

    torch.set_num_threads(args.threads)
    from nfit.config import FitConfig
    from nfit.device import resolve_device

    device = resolve_device(args.device)
    if args.memory_only is not None:
        import nfit

        res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([sys.executable] + sys.argv),
               "machine": machine_info(device)}
        res["memory"] = bench_memory(nfit.load(args.memory_only), args.memory_size, device, args.threads)
        res["memory"]["fitted_field"] = True
        print(markdown(res))
        if args.json is not None:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
        return 0
    steps = args.steps if args.steps is not None else (20 if args.quick else 1000)
    lr = args.lr if args.lr is not None else FitConfig.lr
    image = Path(args.image) if Path(args.image).is_file() else args.data / args.image
    sizes = (128, 256) if args.quick else (1024, 4096)
    mem_size = 512 if args.quick else args.memory_size
    rep_small = args.render_repeats or (2 if args.quick else 3)
    rep_big = rep_small if device.type == "cuda" else 1

    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([sys.executable] + sys.argv),
                 "image": image.name, "quick": args.quick, "machine": machine_info(device)}
    print(f"# nfit bench_fit on {device} ({torch.get_num_threads()} torch threads), image {image}", flush=True)

    values = load_photo(image)
    print(f"fitting {FIT_SIZE}x{FIT_SIZE} for {steps} steps (lr {lr:g}) ...", flush=True)
    nf, res["fit"] = bench_fit(values, steps, lr, device, f"{image.stem}_{FIT_SIZE}.png")
    print(f"  median step {res['fit']['step_seconds_median'] * 1e3:.1f} ms, PSNR {res['fit']['psnr_after']}", flush=True)

    res["render"] = []
    for size, reps in zip(sizes, (rep_small, rep_big)):
        print(f"rendering {size}x{size} x{reps} ...", flush=True)
        res["render"].append(bench_render(nf, size, reps, device))
        print(f"  {res['render'][-1]['mpix_per_s']:.3f} MP/s", flush=True)

    if args.save_field is not None:
        nf.save(args.save_field)
        print(f"saved the fitted field to {args.save_field}", flush=True)

    if not args.no_memory:
        big = res["render"][-1]
        predicted = big["seconds_median"] * (mem_size / big["size"]) ** 2
        res["memory_predicted_seconds_fitted"] = predicted
        if args.memory_width == "fitted" or (args.memory_width == "auto" and predicted <= args.memory_budget):
            mem_nf = nf
        else:
            width = 64 if args.memory_width == "auto" else int(args.memory_width)
            mem_nf = narrow_field(nf, width)
            print(f"  (fitted field predicted to take {predicted:.0f} s at {mem_size}: using a random-init "
                  f"width-{width} SIREN for the memory check)", flush=True)
        print(f"rendering {mem_size}x{mem_size} in a subprocess for peak RSS ...", flush=True)
        res["memory"] = bench_memory(mem_nf, mem_size, device, args.threads)
        res["memory"]["fitted_field"] = mem_nf is nf
        print(f"  peak RSS {_gb(res['memory']['peak_rss_bytes'])} in {res['memory']['seconds']:.1f} s", flush=True)

    print()
    print(markdown(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
