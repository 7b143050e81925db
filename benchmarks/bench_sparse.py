#!/usr/bin/env python
"""Meta-SparseINR against its baselines: PSNR against the number of stored values.

    PYTHONPATH=. python benchmarks/bench_sparse.py --data ../shared/datasets/dev/meta_faces --res 64 \\
        --dense-steps 500 --rounds 10 --steps-per-round 40 --levels 4 7 10

Stages (each run directory is reused when it already exists, so an interrupted
benchmark continues where it stopped):

1. dense: MAML (K=2, second order, batch 3: Meta-SparseINR's setting) from scratch;
2. sparse: ``--algo sparse --from dense`` with magnitude pruning, and the random-pruning
   baseline with the same schedule;
3. dense-narrow: for each of ``--levels``, a dense MAML field whose width gives the
   level's number of stored values, meta-trained for as many outer steps as that level
   had in all (dense steps + level x steps per round);
4. evaluation on the dense run's validation split (the same files for every method):
   Adam at lr 1e-4 for 100 steps from each initialisation (the paper's protocol), and
   from a random initialisation (scratch) at full width.

Writes ``results.json``, ``table.md`` and ``psnr_vs_values.png`` (matplotlib, the
``plot`` extra) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "dev" / "meta_faces"

from nfit.config import AdaptConfig, DataConfig, FieldOptions, TrainConfig  # noqa: E402
from nfit.data import scan_folder, split_files  # noqa: E402
from nfit.evaluation import evaluate_folder  # noqa: E402
from nfit.runs import LEVELS_DIR, load_init  # noqa: E402
from nfit.fields.masked import narrow_width  # noqa: E402
from nfit.train import meta_train  # noqa: E402

MAML = {"inner_steps": 2}  # Meta-SparseINR: 2 second-order inner steps


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train(run: Path, args, **kw) -> Path:
    if (run / "init.safetensors").is_file() and not (run / "checkpoint.json").is_file():
        return run
    if (run / "checkpoint.json").is_file():
        done = json.loads((run / "checkpoint.json").read_text())["step"]
        total = json.loads((run / "run.json").read_text())["train"]["steps"]
        if done >= total:
            return run
        log(f"resume {run.name} at {done}/{total}")
        meta_train(None, run, resume=True)
        return run
    log(f"train {run.name}")
    meta_train(args.data, run, **kw)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sparse"))
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--dense", help="use this dense run instead of training one")
    p.add_argument("--dense-steps", type=int, default=500)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps-per-round", type=int, default=40)
    p.add_argument("--levels", type=int, nargs="+", default=[4, 7, 10])
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5, help="outer Adam (the paper: 1e-5 over 30k steps per round)")
    p.add_argument("--val-limit", type=int, default=8, help="validation signals during training (progress only)")
    p.add_argument("--eval-limit", type=int, default=16, help="held-out signals every method is evaluated on")
    p.add_argument("--eval-steps", type=int, default=AdaptConfig.adam_steps)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = TrainConfig.seed
    common = dict(data_config=DataConfig(res=args.res, val_limit=args.val_limit, workers=0))

    def maml_config(steps: int) -> TrainConfig:
        return TrainConfig(algo="maml", steps=steps, batch_size=args.batch, lr=args.lr, val_every=100, ckpt_every=100,
                           device=args.device)

    dense = Path(args.dense) if args.dense else train(out / "dense", args, train=maml_config(args.dense_steps),
                                                       algo_options=MAML, **common)
    dense_steps = load_init(dense).train["steps"]
    sparse_runs = {}
    for method in ("magnitude", "random"):
        sparse_cfg = TrainConfig(algo="sparse", batch_size=args.batch, lr=args.lr, val_every=10**6, ckpt_every=100,
                                 device=args.device)
        sparse_runs[method] = train(out / f"sparse-{method}", args, train=sparse_cfg, init_from=dense, **common,
                                    algo_options={"rounds": args.rounds, "steps_per_round": args.steps_per_round,
                                                  "prune": method})
    # The validation split of the dense run: every method is evaluated on the same held-out files.
    files = scan_folder(Path(args.data))
    val = split_files(files, DataConfig.val_fraction, seed)[1][: args.eval_limit]
    val_dir = out / "val"
    shutil.rmtree(val_dir, ignore_errors=True)
    val_dir.mkdir()
    for f in val:
        (val_dir / f.name).symlink_to(f.resolve())
    adam = AdaptConfig(optimizer="adam", adam_steps=args.eval_steps, device=args.device)

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["method"], r["level"]) for r in results}

    def record(method: str, level: int, init, **kw) -> None:
        if (method, level) in done:
            return
        log(f"eval {method} level {level}")
        rep = evaluate_folder(init, val_dir, adam, res=args.res, **kw)
        r = {"method": method, "level": level, "density": rep.density, "values": rep.values,
             "psnr": rep.results["adam"]["psnr_mean"][-1], "psnr_std": rep.results["adam"]["psnr_std"][-1],
             "ssim": (rep.results["adam"]["ssim_mean"] or [None])[-1], "signals": rep.signals}
        results.append(r)
        results_path.write_text(json.dumps(results, indent=1))
        log(json.dumps(r))

    record("scratch", 0, "random")
    record("dense", 0, dense)
    base = load_init(dense).field
    for level in args.levels:
        for method, run in sparse_runs.items():
            record(f"sparse-{method}", level, run / LEVELS_DIR / f"level-{level:02d}.safetensors")
        level_init = load_init(sparse_runs["magnitude"] / LEVELS_DIR / f"level-{level:02d}.safetensors")
        width = narrow_width(base, level_init.n_values)
        narrow = train(out / f"narrow-w{width}", args, train=maml_config(dense_steps + level * args.steps_per_round),
                       algo_options=MAML, field_options=FieldOptions(width=width), **common)
        record("dense-narrow", level, narrow)
    write_table(results, out)
    plot(results, out / "psnr_vs_values.png", args)


def write_table(results: list[dict], out: Path) -> None:
    lines = ["| method | level | density | stored values | PSNR (dB) | SSIM |", "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["level"], r["method"])):
        ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
        lines.append(f"| {r['method']} | {r['level']} | {r['density']:.4f} | {r['values']:,} | "
                     f"{r['psnr']:.2f} ± {r['psnr_std']:.2f} | {ssim} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(results: list[dict], path: Path, args) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install 'nfit[plot]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4), dpi=150)
    styles = {"sparse-magnitude": ("Meta-SparseINR (magnitude)", "o-"), "sparse-random": ("random pruning", "s--"),
              "dense-narrow": ("dense-narrow", "^-."), "dense": ("dense (level 0)", "k*"), "scratch": ("scratch, full width", "kx")}
    for method, (label, style) in styles.items():
        rs = sorted((r for r in results if r["method"] == method), key=lambda r: r["values"])
        if rs:
            ax.plot([r["values"] for r in rs], [r["psnr"] for r in rs], style, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("stored values per signal (weights + biases)")
    ax.set_ylabel(f"PSNR (dB), Adam {args.eval_steps} steps at 1e-4")
    ax.set_title(f"{Path(args.data).name} {args.res}x{args.res}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
