#!/usr/bin/env python
"""torch.profiler of one meta-learning outer step (loss + backward, as nfit.train runs it).

    PYTHONPATH=. python benchmarks/profile_step.py --device cpu --res 32 --batch 2      # small, on a CPU
    PYTHONPATH=. python benchmarks/profile_step.py --device cuda --res 178 --batch 8    # GradNCP's setting
    PYTHONPATH=. python benchmarks/profile_step.py --device cuda --res 178 --compile    # the compiled step

Runs --warmup uncounted steps, then profiles one step; prints the top ops by self
time (CPU, and CUDA on a GPU) and the share of the step spent in matmuls, and writes
a Chrome trace (open in chrome://tracing or https://ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.run import ALGOS  # noqa: E402
from nfit.device import resolve_device  # noqa: E402
from nfit.fields import build_field  # noqa: E402
from nfit.flops import meta_step_flops, siren_dims  # noqa: E402
from nfit.meta import build_strategy  # noqa: E402
from nfit.signals import grid_coords  # noqa: E402

MATMUL = ("aten::baddbmm", "aten::bmm", "aten::mm", "aten::addmm", "aten::matmul")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algo", default="gradncp", choices=list(ALGOS))
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="profile nfit.meta.compiled's step (TF32 on CUDA)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace", type=Path, default=None, help="Chrome trace path (default benchmarks/results/profile-...json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    field = build_field("siren", {"in_dim": 2, "out_dim": 3})
    theta = {k: v.to(device).requires_grad_(True) for k, v in field.init_params(torch.Generator().manual_seed(0)).items()}
    strategy = build_strategy(args.algo, ALGOS[args.algo])
    coords = grid_coords((args.res, args.res), device=device)
    targets = torch.rand(args.batch, args.res * args.res, 3, generator=torch.Generator().manual_seed(0)).to(device)
    if args.compile:
        from nfit.meta.compiled import outer_step

        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        fn = outer_step(strategy, field)
        plain = {k: v.detach() for k, v in theta.items()}

        def step():
            fn(plain, coords, targets)
    else:
        def step():
            strategy.outer_loss(field, theta, coords, targets).loss.backward()
            for v in theta.values():
                v.grad = None

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - t
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top))
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr, 0) for e in events)
    mm = sum(getattr(e, attr, 0) for e in events if e.key in MATMUL)
    flops = meta_step_flops(args.algo, siren_dims(), args.res * args.res, args.batch, strategy.config)
    summary = {"algo": args.algo, **ALGOS[args.algo], "res": args.res, "batch": args.batch, "device": str(device),
               "compile": args.compile, "profiled_wall_s": round(wall, 4), "matmul_self_time_share": round(mm / total, 4)
               if total else None, "matmul_flops": flops, "tflops_per_s_under_profiler": flops / wall / 1e12}
    trace = args.trace or ROOT / "benchmarks" / "results" / (
        f"profile-{args.algo}-{args.res}-b{args.batch}-{device.type}{'-compiled' if args.compile else ''}.json")
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    print(json.dumps(summary))
    print(f"wrote {trace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
