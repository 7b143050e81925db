#!/usr/bin/env python
"""nfit's MAML against the reference implementation's (GradNCP's Learnit baseline), seed by seed.

    git --git-dir=/work/.mirror/jihoontack+GradNCP/repo archive HEAD | tar -x -C /tmp/ref   # the reference
    PYTHONPATH=. python benchmarks/bench_reference.py --reference /tmp/ref --seeds 0 1 2 \\
        --json benchmarks/results/reference_maml.json
    # --resume keeps the runs already in --json and runs only the missing (variant, seed) pairs

Both sides train on the same files and are measured the same way:

* data: ``bench_meta.py crops``' protocol, generated once under ``--work`` (reused when
  present): 200 random 32x32 crops of three quarters of the photos in ``--data`` for
  training, 100 crops of the other photos for testing (split and crops with seed 0);
* training: MAML, SIREN width 256, depth 5, w0 30; K = 4 second-order inner SGD steps at
  1e-2 on the full context; outer Adam 1e-5, gradient-norm clipping 1.0, batch 8, 150
  outer steps: the reference's ``configs/main/maml_celeba.yaml`` with its
  ``common/args.py`` defaults, and nfit's ``meta_train`` with the same values;
* evaluation: plain SGD (no re-scaling) at 1e-2 from the learned initialisation on the
  100 test crops; PSNR per image of the prediction clamped to [0, 1], averaged over the
  images, after 0..16 steps (the reference's ``maml_full_evaluate`` definition, and nfit's).

Variants (each seed of each runs alone in a fresh process, so a patched grid stays in it):

* ``reference``: the reference's own modules (``models``, ``train.gradient_based``,
  ``common``), its coordinate grid ``linspace(-1, 1, n)`` (endpoints included);
* ``reference_centres``: the same with nfit's pixel-centre grid ``(2i + 1)/n - 1``;
* ``nfit``: ``nfit.train.meta_train`` (what ``nfit meta-train`` runs) and the plain-SGD curve of
  ``nfit eval`` (``nfit.evaluation.adaptation_curves``, without its SSIM), pixel centres;
* ``nfit_endpoints``: the same with ``grid_coords`` patched to the reference's grid, for
  training and evaluation alike.

The reference's own evaluation (its ``inner_adapt``, first order) is used for its runs; as a
cross-check its learned initialisation is also fitted by nfit's evaluator on the same grid
(``plain_by_nfit``). ``step_check``, run first, takes one outer step from the same theta_0 and
batch with both implementations and reports how far their losses and gradients differ.

The reference imports packages that nfit's environment lacks (einops, yaml, tensorboard,
CUDA): its processes get minimal stand-ins for ``einops.rearrange``, ``yaml.safe_load`` (the
config is a flow mapping, read with ``ast``), ``SummaryWriter`` (never used here) and, on a
machine without CUDA, a no-op ``torch.cuda.synchronize``. Nothing of the reference is copied.

Prints one JSON line per run and a table; ``--json`` writes everything (per seed and
mean / sample std per variant) to one file, rewritten after every run.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "dev" / "images"
VARIANTS = ("reference", "reference_centres", "nfit", "nfit_endpoints")
REPORTED_STEPS = (4, 16)

# The protocol; the reference's values come from its config, and are checked against these.
RES, TRAIN_CROPS, TEST_CROPS, CROP_SEED = 32, 200, 100, 0
INNER_STEPS, INNER_LR, OUTER_LR, CLIP, BATCH = 4, 1e-2, 1e-5, 1.0, 8
TEST_STEPS, EVAL_BATCH = 16, 50


# ------------------------------------------------------------------ data


def make_data(data: Path, work: Path) -> tuple[Path, Path]:
    """The train and test crops of ``bench_meta.py crops`` under ``work``, generated unless present."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_meta import make_crops

    from nfit.data import scan_folder

    train, test = work / "train", work / "test"
    if _count_png(train) == TRAIN_CROPS and _count_png(test) == TEST_CROPS:
        return train, test
    if train.exists() or test.exists():
        raise SystemExit(f"{work} holds an incomplete crop set: remove it first")
    photos = scan_folder(data)
    rng = random.Random(CROP_SEED)  # as bench_meta.cmd_crops splits the photos
    test_photos = sorted(rng.sample(photos, max(1, len(photos) // 4)))
    train_photos = [p for p in photos if p not in test_photos]
    make_crops(train_photos, TRAIN_CROPS, RES, train, CROP_SEED)
    make_crops(test_photos, TEST_CROPS, RES, test, CROP_SEED + 1)
    return train, test


def _count_png(folder: Path) -> int:
    return len(list(folder.glob("*.png"))) if folder.is_dir() else 0


def read_crops(folder: Path, limit: int | None = None):
    """The PNGs of ``folder`` (sorted; the first ``limit``) as float32 [M, 3, H, W] in [0, 1], as torchvision's
    ToTensor gives."""
    import numpy as np
    import torch
    from PIL import Image

    files = sorted(folder.glob("*.png"))[:limit]
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------ grids


def endpoint_grid_coords(shape, start=0, stop=None, *, device=None, dtype=None):
    """nfit's ``grid_coords`` with the reference's convention: sample i of n at 2i/(n-1) - 1."""
    import torch

    dtype = dtype or torch.float32
    total = math.prod(shape)
    stop = total if stop is None else min(stop, total)
    idx = torch.arange(start, stop, device=device, dtype=torch.int64)
    cols, stride = [], total
    for n in shape:
        stride //= n
        i = (idx // stride) % n
        cols.append((2 * i).to(dtype) / max(n - 1, 1) - 1)
    return torch.stack(cols, dim=-1)


def use_endpoint_grid() -> None:
    """Make nfit sample linspace(-1, 1, n) everywhere it asks for grid coordinates (this process only)."""
    import nfit.fields.base
    import nfit.fields.nerv
    import nfit.signals
    import nfit.signals.grid

    for module in (nfit.signals.grid, nfit.signals, nfit.fields.base, nfit.fields.nerv):
        module.grid_coords = endpoint_grid_coords


# ------------------------------------------------------------------ nfit


def run_nfit(seed: int, train: Path, test: Path, run: Path, steps: int, limit: int | None) -> dict:
    """Meta-train with nfit (as ``nfit meta-train --algo maml``) and evaluate as ``nfit eval`` does."""
    from nfit.config import DataConfig, TrainConfig
    from nfit.runs import load_init
    from nfit.train import meta_train

    config = TrainConfig(algo="maml", steps=steps, batch_size=BATCH, lr=OUTER_LR, clip=CLIP, seed=seed,
                         val_every=steps, ckpt_every=steps, log_every=steps, device="cpu")
    data = DataConfig(res=RES, channels=3, val_fraction=0.0, workers=0)
    t = time.perf_counter()
    result = meta_train(train, run, config, data, algo_options={"inner_steps": INNER_STEPS, "inner_lr": INNER_LR})
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    init = load_init(result.init)
    plain = plain_sgd_curve(init.field, init.params, test, limit)
    corners = init.field.unit_coords((RES, RES))[[0, -1]].tolist()  # the grid in force (patched or not)
    return {"plain": plain, "grid_corners": corners, "train_s": round(train_s, 1),
            "eval_s": round(time.perf_counter() - t, 1)}


def plain_sgd_curve(field, params, test: Path, limit: int | None) -> list[float]:
    """``nfit eval``'s "plain" curve (``evaluate_folder`` without its SSIM and re-scaled variant): mean over
    the test crops of the per-image PSNR of the clamped prediction after 0..TEST_STEPS plain SGD steps."""
    import torch

    from nfit.config import AdaptConfig, SignalOptions
    from nfit.data import SignalFolder, load_all, scan_media
    from nfit.device import flush_denormals
    from nfit.evaluation import adaptation_curves

    _, files = scan_media(test, "image")
    files = files[:limit]
    _, signals = load_all(SignalFolder(files, SignalOptions("image", res=RES), 3), list(range(len(files))), True, None)
    config = AdaptConfig(steps=TEST_STEPS, lr=INNER_LR, rescale=False, batch_size=EVAL_BATCH, device="cpu")
    with flush_denormals():  # as evaluate_folder
        curves = adaptation_curves(field, params, signals, config, torch.device("cpu"), with_ssim=False)
    return [round(v, 3) for v in curves.psnr.mean(dim=1).tolist()]


# ------------------------------------------------------------------ the reference


def _rearrange(x, pattern: str, **sizes):
    """What the reference asks of ``einops.rearrange``: regroup and permute named axes."""

    def parse(side: str) -> list[list[str]]:
        return [g.split() if g else [name] for g, name in re.findall(r"\(([^)]*)\)|(\S+)", side)]

    lhs, rhs = (parse(s) for s in pattern.split("->"))
    known = dict(sizes)
    for group, dim in zip(lhs, x.shape, strict=True):
        unknown = [n for n in group if n not in known]
        if len(unknown) > 1:
            raise ValueError(f"cannot split axis {group} of {pattern!r}")
        if unknown:
            known[unknown[0]] = dim // math.prod(known[n] for n in group if n in known)
    left = [n for g in lhs for n in g]
    x = x.reshape([known[n] for n in left]).permute([left.index(n) for g in rhs for n in g])
    return x.reshape([math.prod(known[n] for n in g) for g in rhs])


def _safe_load(stream) -> dict:
    """What the reference asks of ``yaml.safe_load``: its configs are flow mappings with # comments."""
    text = stream.read()
    text = text.decode() if isinstance(text, bytes) else text
    return ast.literal_eval(re.sub(r"#[^\n]*", "", text))


def install_reference_stubs() -> None:
    """Stand-ins for the reference's imports that this environment lacks (this process only)."""
    import torch

    def module(name: str, **attrs) -> None:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__dict__.update(attrs)

    module("einops", rearrange=_rearrange)
    module("yaml", safe_load=_safe_load)
    module("torch.utils.tensorboard", SummaryWriter=type("SummaryWriter", (), {"__init__": lambda self, *a, **k: None}))
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None  # train_step synchronises after every outer step


class _QuietLogger:
    """The part of the reference's Logger that ``train_step`` calls, keeping the lines it logs."""

    def __init__(self):
        self.lines: list[str] = []

    def log(self, text: str) -> None:
        self.lines.append(str(text))

    def log_dirname(self, text: str) -> None:
        pass

    def scalar_summary(self, tag: str, value: float, step: int) -> None:
        pass


def reference_options(reference: Path, seed: int, steps: int):
    """The reference's options P: ``common/args.py`` defaults, ``configs/main/maml_celeba.yaml``, then our data."""
    from common.args import parse_args

    argv = sys.argv
    sys.argv = ["main.py", "--configs", str(reference / "configs" / "main" / "maml_celeba.yaml"), "--seed", str(seed)]
    try:
        P = parse_args()
    finally:
        sys.argv = argv
    want = {"mode": "maml", "inner_steps": INNER_STEPS, "inner_lr": INNER_LR, "lr": OUTER_LR, "batch_size": BATCH,
            "decoder": "siren", "num_layers": 5, "dim_hidden": 256, "w0": 30.0, "sample_type": "none"}
    have = {k: getattr(P, k) for k in want}
    if have != want:
        raise SystemExit(f"the reference's config differs from this protocol: {have} != {want}")
    P.outer_steps = steps
    P.print_step = steps  # train_step logs its running averages once, at the end
    P.data_type, P.data_size, P.dim_in, P.dim_out = "img", (3, RES, RES), 2, 3  # what get_dataset sets
    P.world_size, P.data_parallel, P.rank = 0, False, 0
    return P


def pixel_centre_grid(n: int):
    """The reference's grid buffer layout ((h w), 2) with nfit's pixel-centre coordinates."""
    from nfit.signals.grid import CONVENTION, grid_coords

    assert CONVENTION["name"] == "pixel_center"
    return grid_coords((n, n))


def _compatible(sampler_class: type) -> type:
    """``sampler_class`` on a torch whose Sampler.__init__ no longer takes the dataset (the reference passes it)."""
    import torch

    class TakesDataset(torch.utils.data.Sampler):
        def __init__(self, data_source=None):
            pass

    return type(sampler_class.__name__, (sampler_class, TakesDataset), {})


def train_reference(P, crops, centres: bool):
    """Meta-train as the reference's main.py + meta_trainer do, on ``crops`` [M, 3, H, W]."""
    import torch
    from common.utils import InfiniteSampler, get_optimizer
    from models.model import get_model
    from train.gradient_based.maml import train_step
    from utils import MetricLogger, set_random_seed

    set_random_seed(P.seed)
    train_set = [{"imgs": img} for img in crops]
    sampler = _compatible(InfiniteSampler)(train_set, rank=0, num_replicas=1, shuffle=True, seed=P.seed)
    loader = torch.utils.data.DataLoader(train_set, sampler=sampler, batch_size=P.batch_size, num_workers=0)
    model = get_model(P)
    if centres:
        model.grid.copy_(pixel_centre_grid(RES))
    optimizer = get_optimizer(P, model)
    metrics, logger = MetricLogger(delimiter="  "), _QuietLogger()
    for it, batch in enumerate(loader):
        step = it + 1
        if step > P.outer_steps:
            break
        model.iter = step
        metrics.meters["data_time"].update(0.0)  # meta_trainer times the batch's transfer here
        train_step(P, step, model, optimizer, batch, metric_logger=metrics, logger=logger)
    return model, logger.lines


def evaluate_reference(P, model, crops) -> list[float]:
    """Mean over ``crops`` of the per-image PSNR of the clamped prediction after 0..TEST_STEPS plain SGD steps,
    taken one at a time with the reference's ``inner_adapt`` (first order, as its evaluation)."""
    import torch
    from train.gradient_based import inner_adapt
    from utils import psnr

    model.eval()
    model.coord_init()
    total = torch.zeros(TEST_STEPS + 1)
    for lo in range(0, len(crops), EVAL_BATCH):
        imgs = crops[lo : lo + EVAL_BATCH]
        context = [imgs]
        params = model.get_batch_params(None, len(imgs))
        for k in range(TEST_STEPS + 1):
            with torch.no_grad():
                pred = model(None, params).clamp(0, 1)
                mse = (pred - imgs).pow(2).reshape(len(imgs), -1).mean(dim=1)
                total[k] += psnr(mse).sum()
            if k < TEST_STEPS:
                params, _ = inner_adapt(model, context, P.inner_lr, 1, first_order=True, params=params)
                params = type(params)((n, v.detach().requires_grad_(True)) for n, v in params.items())
    return [round(v, 3) for v in (total / len(crops)).tolist()]


def evaluate_with_nfit(model, test: Path, limit: int | None) -> list[float]:
    """The reference's learned initialisation fitted by nfit's evaluator (plain SGD), on the grid in force."""
    from nfit.fields import build_field

    field = build_field("siren", {"in_dim": 2, "out_dim": 3, "width": 256, "depth": 5, "w0": 30.0})
    params = {}
    for name, value in model.decoder.state_dict().items():  # layers.{i}.linear.{weight,bias} -> l{i}.{...}
        i, kind = re.fullmatch(r"layers\.(\d+)\.linear\.(weight|bias)", name).groups()
        params[f"l{i}.{kind}"] = value.detach().clone()
    return plain_sgd_curve(field, params, test, limit)


def run_reference(reference: Path, seed: int, train: Path, test: Path, steps: int, centres: bool,
                  limit: int | None) -> dict:
    """Meta-train with the reference's modules, evaluate with its inner loop; cross-check with nfit's evaluator."""
    install_reference_stubs()
    sys.path.insert(0, str(reference))
    P = reference_options(reference, seed, steps)
    t = time.perf_counter()
    model, log = train_reference(P, read_crops(train), centres)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    plain = evaluate_reference(P, model, read_crops(test, limit))
    eval_s = time.perf_counter() - t
    if not centres:
        use_endpoint_grid()  # nfit's evaluator on the grid the reference trained with
    return {"plain": plain, "plain_by_nfit": evaluate_with_nfit(model, test, limit),
            "grid_corners": model.grid[[0, -1]].tolist(), "train_s": round(train_s, 1),
            "eval_s": round(eval_s, 1), "train_log": log[-1:]}


def step_check(reference: Path, train: Path, batch: int = 2) -> dict:
    """From the same theta_0 and batch, one outer step's loss and gradient by each implementation, on each grid.

    Isolates the algorithms (inner loop, loss normalisation, outer loss) from the random draws."""
    import torch

    from nfit.fields import build_field
    from nfit.meta import build_strategy

    install_reference_stubs()
    sys.path.insert(0, str(reference))
    from models.model import get_model
    from train.gradient_based import inner_adapt

    P = reference_options(reference, 0, 1)
    torch.manual_seed(0)
    model = get_model(P)
    crops = read_crops(train, batch)  # [B, 3, H, W]
    targets = crops.permute(0, 2, 3, 1).reshape(batch, -1, 3)  # nfit's [B, N, C], pixels in the same order
    field = build_field("siren", {"in_dim": 2, "out_dim": 3, "width": 256, "depth": 5, "w0": 30.0})
    strategy = build_strategy("maml", {"inner_steps": P.inner_steps, "inner_lr": P.inner_lr})
    out = {}
    for grid in ("endpoints", "centres"):
        coords = endpoint_grid_coords((RES, RES)) if grid == "endpoints" else pixel_centre_grid(RES)
        model.grid.copy_(coords)
        model.zero_grad()
        params, _ = inner_adapt(model, [crops], P.inner_lr, P.inner_steps, first_order=False)
        ref_loss = model([crops], params=params).mean()
        ref_loss.backward()
        theta = {}
        for name, p in model.decoder.named_parameters():  # layers.{i}.linear.{weight,bias} -> l{i}.{...}
            i, kind = re.fullmatch(r"layers\.(\d+)\.linear\.(weight|bias)", name).groups()
            theta[f"l{i}.{kind}"] = p.detach().clone().requires_grad_(True)
        result = strategy.outer_loss(field, theta, coords, targets)
        result.loss.backward()
        ref_grad = torch.cat([p.grad.flatten() for p in model.decoder.parameters()])
        nfit_grad = torch.cat([theta[k].grad.flatten() for k in theta])  # same order: layer by layer, weight, bias
        out[grid] = {"loss_reference": ref_loss.item(), "loss_nfit": result.loss.item(),
                     "grad_rel_diff": ((ref_grad - nfit_grad).norm() / ref_grad.norm()).item()}
    return out


# ------------------------------------------------------------------ one run, in its own process


def run_one(variant: str, seed: int, args) -> dict:
    """One (variant, seed): trains and evaluates in this process; returns its record."""
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    train, test = work / "train", work / "test"
    if variant == "step_check":
        return {"variant": variant, **step_check(Path(args.reference), train)}
    if variant.startswith("reference"):
        record = run_reference(Path(args.reference), seed, train, test, args.steps, variant == "reference_centres",
                               args.test_limit)
    else:
        if variant == "nfit_endpoints":
            use_endpoint_grid()
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            record = run_nfit(seed, train, test, Path(tmp) / "run", args.steps, args.test_limit)
    return {"variant": variant, "seed": seed, **{f"plain_k{k}": record["plain"][k] for k in REPORTED_STEPS}, **record}


def spawn(variant: str, seed: int, args) -> dict:
    """Run one (variant, seed) in a fresh Python process (one at a time), with its wall time."""
    cmd = [sys.executable, __file__, "--reference", args.reference, "--work", args.work, "--steps", str(args.steps),
           "--threads", str(args.threads), "--one", variant, str(seed)]
    if args.test_limit is not None:
        cmd += ["--test-limit", str(args.test_limit)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = round(time.perf_counter() - t, 1)
    if proc.returncode:
        return {"variant": variant, "seed": seed, "error": proc.stderr.strip().splitlines()[-5:],
                "returncode": proc.returncode, "stdout": proc.stdout.strip().splitlines()[-3:], "wall_s": wall}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


# ------------------------------------------------------------------ summary


def summarise(records: list[dict]) -> dict:
    """Per variant: the per-seed PSNRs at the reported steps, their mean and sample std (n - 1)."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        done = [r for r in records if r["variant"] == variant and "error" not in r]
        entry = {"seeds": [r["seed"] for r in done]}
        for k in REPORTED_STEPS:
            values = [r[f"plain_k{k}"] for r in done]
            entry[f"plain_k{k}"] = values
            entry[f"plain_k{k}_mean"] = round(statistics.mean(values), 3) if values else None
            entry[f"plain_k{k}_std"] = round(statistics.stdev(values), 3) if len(values) > 1 else None
        entry["wall_s"] = [r["wall_s"] for r in done]
        out[variant] = entry
    return out


def print_table(summary: dict) -> None:
    print(f"{'variant':<20}" + "".join(f"{'K=' + str(k) + ' per seed':>28}{'mean +- std':>16}" for k in REPORTED_STEPS))
    for variant, e in summary.items():
        row = f"{variant:<20}"
        for k in REPORTED_STEPS:
            seeds = " ".join(f"{v:.2f}" for v in e[f"plain_k{k}"])
            std = e[f"plain_k{k}_std"]
            row += f"{seeds:>28}{e[f'plain_k{k}_mean']:>9.2f} +- {std if std is not None else float('nan'):.2f}"
        print(row)


def machine() -> dict:
    import platform

    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="a checkout of github.com/jihoontack/GradNCP")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="photos the crops are cut from")
    parser.add_argument("--work", default="/tmp/mamlcmp", help="where the crops (train/, test/) are kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=150, help="outer steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--test-limit", type=int, help="evaluate on the first N test crops only (smoke tests)")
    parser.add_argument("--json", help="write the records and the summary to this file")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --json (same protocol) and run only the missing ones")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.reference, args.work = str(Path(args.reference).resolve()), str(Path(args.work).resolve())
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)), flush=True)
        return
    make_data(Path(args.data), Path(args.work))
    records, check = previous_runs(args) if args.resume else ([], None)
    if check is None:
        check = spawn("step_check", 0, args)
        print(json.dumps(check), flush=True)
    done = {(r["variant"], r["seed"]) for r in records}
    for seed in args.seeds:  # seed-major: an interrupted run still has every variant of the first seeds
        for variant in args.variants:
            if (variant, seed) in done:
                continue
            records.append(spawn(variant, seed, args))
            print(json.dumps(records[-1]), flush=True)
            if args.json:
                write_results(Path(args.json), args, records, check)
    print_table(summarise(records))


def protocol(args) -> dict:
    return {"work": args.work, "train_crops": TRAIN_CROPS, "test_crops": args.test_limit or TEST_CROPS, "res": RES,
            "outer_steps": args.steps, "batch": BATCH, "inner_steps": INNER_STEPS, "inner_lr": INNER_LR,
            "outer_lr": OUTER_LR, "clip": CLIP, "test_steps": TEST_STEPS, "field": "siren 256x5, w0 30",
            "psnr": "per image, clamped prediction, mean over the test crops; std over seeds (n - 1)"}


def previous_runs(args) -> tuple[list[dict], dict | None]:
    """The successful runs and the step check already in ``--json``, if it was written with the same protocol."""
    path = Path(args.json) if args.json else None
    if path is None or not path.exists():
        return [], None
    old = json.loads(path.read_text())
    if old.get("protocol") != protocol(args):
        raise SystemExit(f"{path} was written with another protocol: not resuming from it")
    return [r for r in old["records"] if "error" not in r], old.get("step_check")


def write_results(path: Path, args, records: list[dict], check: dict) -> None:
    result = {"bench": "reference_maml", "protocol": protocol(args), "summary": summarise(records),
              "records": records, "step_check": check, "machine": machine()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
