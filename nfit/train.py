"""Meta-training: the outer loop, the same for every strategy.

    RUN/
      run.json                  the configuration (resuming reads it back)
      metrics.jsonl             one JSON object per logged step and per validation
      checkpoint.safetensors    theta_0, Adam's moments, RNG state; metadata: step, ...
      checkpoint.json           the same metadata and the SHA-256 of checkpoint.safetensors, for people
      init.safetensors          the result: the learned initialisation (see nfit.fieldfile)
      levels/level-KK.safetensors   --algo sparse: the initialisation after round KK (its own mask)
      preview.png               validation signals (top) and their reconstructions after K_test steps
      tb/                       TensorBoard events, when tensorboard is installed

Meta-SparseINR (``--algo sparse``) starts from a dense run's result and prunes at
the start of every round (see :mod:`nfit.meta.sparse`); the field, grid and
channels are the dense initialisation's.

Data-parallel under torchrun: every process takes a contiguous slice of the global
batch, DistributedDataParallel averages the gradients (so the step equals a single
process on the whole batch), and only rank 0 validates and writes files.

Faults. Every file is written atomically (nfit.atomic), so a kill at any instant
leaves each file whole: the new version or the previous one. Resuming reads only
checkpoint.safetensors, which carries its own metadata; checkpoint.json is a copy
that a kill between the two renames can leave one checkpoint behind, so it records
the SHA-256 of the checkpoint it describes and resuming rewrites it when it does
not match. A non-finite loss or gradient norm never reaches the parameters: the
run stops with its last checkpoint as the result, or (``nan_policy="skip"``) the
step's update is dropped and counted. A failed write (a full disk) is an
OutputError naming the file, and the files written before it stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nfit._version import __version__
from nfit.atomic import atomic_output, make_dirs, same_file, stale_temporaries
from nfit.config import AdaptConfig, DataConfig, FieldOptions, SignalOptions, TrainConfig
from nfit.data import BatchStream, DataSummary, SignalFolder, guess_channels, load_all, scan_media, split_files
from nfit.device import flush_denormals, peak_memory, resolve_device, tune_cpu_allocator
from nfit.errors import ConfigError, FieldFileError, OutputError, TrainingError
from nfit.evaluation import adaptation_curves
from nfit.fieldfile import (
    LEVELS_DIR,
    MASK_PREFIX,
    META_KEY,
    MetaInit,
    file_sha256,
    load_init,
    read_safetensors,
    save_init,
    save_tensors,
)
from nfit.fields import Field, Params, build_field, field_config_dict
from nfit.fit import random_init
from nfit.meta import Strategy, build_strategy, strategy_config_dict
from nfit.memory import gib, measure_step
from nfit.meta.sparse import Mask, Masked, Sparse, density, full_mask, mask_size
from nfit.signals import CONVENTION, MODALITIES

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
INIT_FILE = "init.safetensors"
LOG_FILE = "metrics.jsonl"
PREVIEW = "preview.png"
PREVIEW_SIGNALS = 8


@dataclass
class TrainEvent:
    """What a progress display needs. kind: "start"; "memory" (the step's measured memory and the
    micro-batch); "tick" (every step: its loss and seconds); "step" (every log_every steps: the
    logged values); "estimate" (once: the time for the steps left); "validating" (one begins);
    "val" (its result); "round"; "checkpoint";
    "warning"."""

    kind: str
    step: int  # outer steps completed
    steps: int
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    run: Path
    init: Path
    step: int
    val_psnr: float | None
    interrupted: bool = False
    bad_files: int = 0
    skipped_steps: int = 0  # updates dropped for a non-finite loss (nan_policy "skip")


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_name: str) -> tuple[_Dist, torch.device]:
    """torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


class _Outer(nn.Module):
    """theta_0 as module parameters, so DistributedDataParallel can average its gradient."""

    def __init__(self, field_: Field, strategy: Strategy, theta: Params):
        super().__init__()
        self.field, self.strategy, self.names = field_, strategy, list(theta)
        self.params = nn.ParameterList([nn.Parameter(v) for v in theta.values()])

    def theta(self) -> Params:
        return dict(zip(self.names, self.params))

    def forward(self, coords: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        out = self.strategy.outer_loss(self.field, self.theta(), coords, targets)
        return out.loss, out.mse


def _accumulate(outer: nn.Module, coords: Tensor, targets: Tensor, micro: int | None) -> tuple[Tensor, Tensor]:
    """Backpropagate the batch's mean outer loss in micro-batches of signals; returns it and the per-signal MSE.

    Under DDP only the last micro-batch synchronises gradients (``no_sync`` before it).
    """
    b = targets.shape[0]
    micro = micro or b
    total, mses = targets.new_zeros(()), []
    for lo in range(0, b, micro):
        part = targets[lo : lo + micro]  # [m, N, C]
        last = lo + micro >= b
        sync = contextlib.nullcontext() if last or not hasattr(outer, "no_sync") else outer.no_sync()
        with sync:
            loss, mse = outer(coords, part)
            (loss * (part.shape[0] / b)).backward()
        total += loss.detach() * (part.shape[0] / b)
        mses.append(mse)
    return total, torch.cat(mses)


def _compiled_step(strategy: Strategy, field_: Field, device: torch.device, world: int):
    """--compile: the outer step of nfit.meta.compiled, compiled lazily at its first call; on CUDA, TF32 matmuls."""
    from nfit.meta.compiled import COMPILABLE, outer_step

    if strategy.name not in COMPILABLE:
        raise ConfigError("--compile", f"applies to {' and '.join(COMPILABLE)}, not --algo {strategy.name}")
    if world > 1:
        raise ConfigError("--compile", "runs in one process only (its gradients bypass DistributedDataParallel)")
    if getattr(strategy.config, "gradient_checkpointing", False):
        raise ConfigError("--gradient-checkpointing", "applies to the eager step; with --compile, the compiler decides what to keep")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32: ~8x the float32 matmul rate; eager keeps float32
        torch.backends.cudnn.allow_tf32 = True
    # NFIT_COMPILE_BACKEND: another torch.compile backend (tests use aot_eager: no C++ compilation)
    return outer_step(strategy, field_, backend=os.environ.get("NFIT_COMPILE_BACKEND", "inductor"))


def _accumulate_compiled(model: _Outer, step_fn, coords: Tensor, targets: Tensor, micro: int | None) -> tuple[Tensor, Tensor]:
    """As :func:`_accumulate`, with the compiled step's gradients written into theta's .grad."""
    b = targets.shape[0]
    micro = micro or b
    theta = {k: v.detach() for k, v in model.theta().items()}
    total, mses = targets.new_zeros(()), []
    for lo in range(0, b, micro):
        part = targets[lo : lo + micro]
        grads, (loss, mse) = step_fn(theta, coords, part)
        w = part.shape[0] / b
        for p, name in zip(model.params, model.names):
            g = grads[name] * w
            p.grad = g if p.grad is None else p.grad + g
        total += loss.detach() * w
        mses.append(mse)
    return total, torch.cat(mses)


def _files_digest(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class _RunSpec:
    """Everything that defines a run; written to run.json and read back by --resume."""

    data: str
    val_dir: str | None
    train: TrainConfig
    data_config: DataConfig
    field: FieldOptions
    algo_options: dict[str, Any]
    init_from: dict[str, str] | None = None  # --algo sparse: {"path", "sha256"} of the dense initialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "nfit_version": __version__,
            "data": self.data,
            "val_dir": self.val_dir,
            "train": dataclasses.asdict(self.train),
            "data_config": dataclasses.asdict(self.data_config),
            "field": dataclasses.asdict(self.field),
            "algo_options": self.algo_options,
            "from": self.init_from,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> _RunSpec:
        return cls(
            raw["data"],
            raw.get("val_dir"),
            TrainConfig(**raw["train"]),
            DataConfig(**raw["data_config"]),
            FieldOptions(**raw["field"]),
            raw.get("algo_options") or {},
            raw.get("from"),
        )


def read_run(run: Path) -> _RunSpec:
    """The configuration of an existing run directory (for --resume)."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise ConfigError(run, f"not an nfit run directory (no {RUN_FILE})")
    try:
        return _RunSpec.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(path, f"unreadable run configuration ({err})") from None


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2) + "\n")


class _Log:
    """metrics.jsonl (and TensorBoard when installed), written by rank 0 only."""

    def __init__(self, run: Path, start_step: int):
        self.path = run / LOG_FILE
        if self.path.exists():  # resuming: drop what was logged after the checkpoint
            kept = [ln for ln in self.path.read_text().splitlines() if _logged_step(ln) <= start_step]
            _write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=start_step or None)
        except ImportError:
            pass

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        try:
            self.file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
            self.file.flush()
        except OSError as err:  # a full disk: say which file, like every other write
            raise OutputError(self.path, f"cannot write ({err.strerror or err})") from None
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the buffer was flushed after every line; a failure was reported then
            pass
        if self.tb is not None:
            self.tb.close()


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _save_checkpoint(run: Path, step: int, model: _Outer, opt: torch.optim.Adam, extra: dict[str, Any],
                     mask: Mask | None) -> None:
    tensors: dict[str, Tensor] = {MASK_PREFIX + k: m.cpu() for k, m in (mask or {}).items()}
    for name, p in zip(model.names, model.params):
        tensors[f"theta/{name}"] = p.detach().cpu().contiguous()
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam/{name}/{key}"] = state[key].detach().cpu().contiguous()
        if "step" in state:
            tensors[f"adam/{name}/step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    tensors["rng/cpu"] = torch.get_rng_state()
    meta = {"format": "nfit-checkpoint", "step": step, "nfit_version": __version__, **extra}
    with atomic_output(run / CHECKPOINT) as tmp:
        save_tensors(run / CHECKPOINT, tmp, tensors, {META_KEY: json.dumps(meta)})
    _write_json(run / CHECKPOINT_JSON, {**meta, "sha256": file_sha256(run / CHECKPOINT)})


def _repair_checkpoint_json(run: Path, meta: dict[str, Any]) -> None:
    """Rewrite checkpoint.json when a kill between the two renames left it describing an older checkpoint."""
    sha = file_sha256(run / CHECKPOINT)
    try:
        current = json.loads((run / CHECKPOINT_JSON).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        current = None
    if current != sha:
        _write_json(run / CHECKPOINT_JSON, {**meta, "sha256": sha})


def _remove_stale_temporaries(run: Path) -> None:
    """Temporaries a killed run left (see nfit.atomic.stale_temporaries); only ours, by exact name."""
    for name in (CHECKPOINT, CHECKPOINT_JSON, INIT_FILE, RUN_FILE, LOG_FILE, PREVIEW):
        for tmp in stale_temporaries(run / name):
            tmp.unlink(missing_ok=True)


def _load_checkpoint(run: Path, model: _Outer, opt: torch.optim.Adam, mask: Mask | None) -> dict[str, Any]:
    path = run / CHECKPOINT
    tensors, meta = read_safetensors(path)
    if meta.get("format") != "nfit-checkpoint":
        raise FieldFileError(path, "not an nfit checkpoint")
    try:
        with torch.no_grad():
            for name, p in zip(model.names, model.params):
                p.copy_(tensors[f"theta/{name}"])
                if f"adam/{name}/exp_avg" in tensors:
                    opt.state[p] = {
                        "step": tensors[f"adam/{name}/step"].reshape(()).clone(),
                        "exp_avg": tensors[f"adam/{name}/exp_avg"].to(p.device),
                        "exp_avg_sq": tensors[f"adam/{name}/exp_avg_sq"].to(p.device),
                    }
        torch.set_rng_state(tensors["rng/cpu"])
        for k, m in (mask or {}).items():
            m.copy_(tensors[MASK_PREFIX + k])
    except (KeyError, RuntimeError) as err:
        raise FieldFileError(path, f"checkpoint does not match this run ({err})") from None
    return meta


def _preview(path: Path, modality: str, targets: Tensor, recon: Tensor) -> None:
    """Targets on the top row, reconstructions below: [n, *shape, C] each -> one PNG of one
    picture per signal (an image, a video's middle frame); nothing for audio."""
    from nfit.signals import MODALITIES
    from nfit.signals.image import quantize, write_image

    picture = MODALITIES[modality].picture
    if picture(targets[0].numpy()) is None:
        return
    top = [torch.as_tensor(picture(t.numpy())) for t in targets]  # [H, W, C] each
    bottom = [torch.as_tensor(picture(r.numpy())) for r in recon]
    grid = torch.cat([torch.cat(top, dim=1), torch.cat(bottom, dim=1)], dim=0)  # [2H, nW, C]
    with atomic_output(path) as tmp:
        write_image(tmp, quantize(grid.numpy(), 8), "png")


def _prepare_data(spec: _RunSpec):
    cfg = spec.data_config
    root = Path(spec.data)
    modality, files = scan_media(root, cfg.modality)
    if spec.val_dir is not None:
        train_files, val_files = files, scan_media(Path(spec.val_dir), modality)[1]
    elif cfg.val_fraction > 0:
        train_files, val_files = split_files(files, cfg.val_fraction, spec.train.seed)
    else:
        train_files, val_files = files, []
    channels = cfg.channels or guess_channels(files, modality)
    opts = cfg.signal_options(modality)
    shape = MODALITIES[modality].dataset_shape(opts)
    summary = DataSummary(str(root), len(files), len(train_files), len(val_files), opts.res, channels, 0,
                          modality, list(shape), opts.sample_rate if modality == "audio" else None)
    return train_files, val_files, channels, opts, summary


UPSCALE_CHECKED = 16  # files whose headers are read to tell whether the grid is larger than the data


def _warn_upscaling(files: list[Path], opts: SignalOptions, warn: Callable[[str], None]) -> None:
    """One warning when the first files are smaller than the grid they are conformed to:
    upscaled signals teach the initialisation blur, and cost memory for nothing."""
    modality = MODALITIES[opts.modality]
    found = [u for u in (modality.upscale(f, opts) for f in sorted(files)[:UPSCALE_CHECKED]) if u is not None]
    upscaled = [(scale, hint) for scale, hint in found if scale > 1.01]
    if upscaled:
        scale, hint = max(upscaled)
        warn(f"{len(upscaled)} of the first {len(found)} files are smaller than the grid and are upscaled to it "
             f"(up to {scale:.2f}x); to train at their own size give {hint}")


def _from_dense(spec: _RunSpec, path: str | Path) -> None:
    """--algo sparse: take the field, grid, channels and (unless given) the inner algorithm and
    its hyperparameters from the dense initialisation, and fix the total steps to the schedule."""
    dense = load_init(path)
    if dense.mask is not None or dense.algo.get("name") == "sparse":
        raise ConfigError("--from", f"{path} is already sparse: start from a dense initialisation")
    spec.init_from = {"path": str(path), "sha256": dense.sha256}
    spec.field = FieldOptions(dense.field_name, extra=dict(dense.field_config))
    grid = MODALITIES[dense.modality].grid_options(dense.shape, dense.rate)
    spec.data_config = dataclasses.replace(
        spec.data_config, modality=dense.modality, channels=dense.channels, res=grid.res,
        **{k: getattr(grid, k) for k in ("sample_rate", "duration", "frames") if getattr(grid, k) is not None})
    options = {k: v for k, v in spec.algo_options.items() if v is not None}
    options.setdefault("inner", dense.algo.get("name"))
    if options["inner"] == dense.algo.get("name"):  # the dense run's own inner settings, unless overridden
        for k, v in (dense.algo.get("config") or {}).items():
            options.setdefault(k, v)
    strategy = build_strategy("sparse", options)  # validates, and drops settings of another inner algorithm
    spec.algo_options = strategy_config_dict(strategy) | strategy_config_dict(strategy.inner)
    spec.algo_options.pop("inner_config", None)
    spec.train = dataclasses.replace(spec.train, steps=strategy.config.steps)


# The time estimate is printed once, after this many steps or this many seconds of them.
ESTIMATE_STEPS, ESTIMATE_SECONDS = 3, 60.0


class _Estimate:
    """Once: the expected time for the steps left, from the first steps' median (the very
    first, which warms caches up, only when it is all there is)."""

    def __init__(self):
        self.times: list[float] = []
        self.done = False

    def add(self, seconds: float, step: int, steps: int, emit: Callable[[TrainEvent], None]) -> None:
        if self.done or step >= steps:  # nothing left to estimate
            return
        self.times.append(seconds)
        if len(self.times) < ESTIMATE_STEPS and sum(self.times) < ESTIMATE_SECONDS:
            return
        self.done = True
        per_step = statistics.median(self.times[1:] or self.times)
        emit(TrainEvent("estimate", step, steps, {"seconds_per_step": per_step, "remaining_s": per_step * (steps - step),
                                                  "measured_steps": len(self.times)}))


def _choose_micro_batch(model: _Outer, field_: Field, coords: Tensor, shape: tuple[int, ...], channels: int,
                        cfg: TrainConfig, world: int, device: torch.device, preferred: int | None,
                        emit: Callable[[TrainEvent], None], modality: str) -> int | None:
    """The micro-batch to run (None: the whole batch at once), from the measured memory of one step.

    ``cfg.micro_batch`` is kept as given (with a warning when it will not fit); otherwise the
    largest that fits, or ``preferred`` (a resumed run's own) while it still fits, so a resumed
    run takes the same steps. A grid on which not even one signal fits is a ConfigError that
    says which size would.
    """
    local = cfg.batch_size // world
    targets = field_.to_units(torch.zeros(1, *shape, channels)).to(device)  # [1, units, out]: values do not matter

    def probe(n: int) -> None:
        loss, _ = model(coords[:n], targets[:, :n])
        loss.backward()
        for p in model.params:
            p.grad = None

    memory = measure_step(probe, coords.shape[0], device)
    if memory is None:
        return cfg.micro_batch
    fits = memory.largest_fitting(local)
    if fits == 0:
        scale = memory.units_fitting(coords.shape[0]) / coords.shape[0]
        hint = GRID_HINTS[modality](shape, scale)
        checkpoint = "" if getattr(getattr(model.strategy, "config", None), "gradient_checkpointing", False) \
            else ", or --gradient-checkpointing"
        raise ConfigError("--res" if modality != "audio" else "--duration", (
            f"one signal on the {'x'.join(map(str, shape))} grid needs about {gib(memory.need(1))} per outer step and "
            f"{gib(memory.available)} is free for it: {hint} would fit{checkpoint}"))
    if cfg.micro_batch is not None:
        chosen = cfg.micro_batch
    elif preferred is not None and 0 < preferred <= fits:
        chosen = preferred
    else:
        chosen = fits
    emit(TrainEvent("memory", 0, cfg.steps, {
        "fixed": memory.fixed, "per_signal": memory.per_signal, "available": memory.available, "batch": local,
        "micro_batch": min(chosen, local), "chosen": cfg.micro_batch is None, "fits": fits,
        "need": memory.need(min(chosen, local))}))
    return None if chosen >= local else chosen


def _side_hint(shape: tuple[int, ...], scale: float) -> str:
    return f"--res {max(1, math.floor(shape[-1] * math.sqrt(scale)))}"


# What to ask for instead when one signal does not fit: a grid with ``scale`` times the units.
GRID_HINTS: dict[str, Callable[[tuple[int, ...], float], str]] = {
    "image": _side_hint,
    "video": _side_hint,
    "audio": lambda shape, scale: f"about {scale * 100:.0f}% of the clip length (--duration)",
}


_RUN_NAMES = (RUN_FILE, CHECKPOINT, CHECKPOINT_JSON, INIT_FILE, LOG_FILE, PREVIEW, LEVELS_DIR, "tb")


def _check_run_dir(run: Path, inputs: list[str | Path | None], force: bool) -> bool:
    """Refuse a run directory that would harm what is there; returns whether it holds a run that
    stopped before its first checkpoint (nothing to lose: it starts again)."""
    if run.exists() and not run.is_dir():
        raise ConfigError(run, "exists and is not a directory")
    existing = next(p for p in (run, *run.absolute().parents) if p.exists())  # checked now, created later
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OutputError(run, f"cannot create folder ({existing} is not a writable folder)")
    for folder in (Path(f) for f in inputs if f is not None):
        if same_file(run, folder) or folder.resolve() in run.resolve().parents:
            raise ConfigError(run, f"is inside the data folder {str(folder)!r}: its files (preview.png) would become "
                                   "training data; choose a run directory elsewhere")
    if (run / RUN_FILE).exists():
        if (run / CHECKPOINT).exists():
            raise ConfigError(run, "already holds a run: continue it with --resume, or choose another -o")
        return True
    taken = [name for name in _RUN_NAMES if (run / name).exists()]
    if taken and not force:
        raise ConfigError(run, f"holds files that are not an nfit run ({', '.join(taken)}), which a run would replace: "
                               "choose another -o, or give --force")
    return False


@flush_denormals()
def meta_train(
    data: str | Path | None,
    run: str | Path,
    train: TrainConfig | None = None,
    data_config: DataConfig | None = None,
    field_options: FieldOptions | None = None,
    algo_options: dict[str, Any] | None = None,
    *,
    val_dir: str | Path | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    nan_policy: str | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    force: bool = False,
) -> TrainResult:
    """Learn an initialisation over a folder of signals; returns where the result is.

    ``train.algo == "sparse"`` needs ``init_from``, a dense initialisation (init file or
    run directory): its field, grid and channels are used, and the run's length is
    rounds x steps per round.

    With ``resume``, the run's own configuration (run.json) is used and training
    continues from its checkpoint, bit for bit as if never stopped; ``train.steps``,
    when given, sets a new target (kept in run.json, so later resumes keep it), and
    ``nan_policy`` may replace the run's.

    The run directory may not be, or lie inside, the data folder, and files of other
    programs are never replaced (a folder holding files of the names a run writes is
    refused unless ``force``). A run that stopped before its first checkpoint is
    started again by the same call. ``train.micro_batch=None`` measures the memory of
    a step first (nfit.memory) and takes the largest micro-batch that fits.

    Raises :class:`TrainingError` when a step's loss or gradient is not finite under
    ``nan_policy="stop"``: nothing is written after the last checkpoint, which stays
    the run's result and the point ``resume`` continues from.
    """
    run = Path(run)
    restarted = False
    if resume:
        spec = read_run(run)
        if train is not None and spec.train.algo == "sparse":
            raise ConfigError("--steps", "a sparse run's length is --rounds x --steps-per-round; it cannot be extended")
        if train is not None:
            spec.train = dataclasses.replace(spec.train, steps=train.steps)
        if nan_policy is not None:
            spec.train = dataclasses.replace(spec.train, nan_policy=nan_policy)
        if data is not None:
            spec.data = str(data)
        if not (run / CHECKPOINT).is_file():
            raise ConfigError(run, f"nothing to resume: the run stopped before its first checkpoint; start it again "
                                   f"with the command that began it (nfit meta-train {spec.data} -o {run})")
    else:
        if data is None:
            raise ConfigError(None, "give a data folder (or --resume RUN)")
        restarted = _check_run_dir(run, [data, val_dir], force)
        train = train or TrainConfig()
        if nan_policy is not None:
            train = dataclasses.replace(train, nan_policy=nan_policy)
        spec = _RunSpec(str(data), None if val_dir is None else str(val_dir), train,
                        data_config or DataConfig(), field_options or FieldOptions(), dict(algo_options or {}))
        if spec.train.algo == "sparse":
            if init_from is None:
                raise ConfigError("--from", "--algo sparse starts from a dense initialisation: give --from DENSE_RUN")
            _from_dense(spec, init_from)
        elif init_from is not None:
            raise ConfigError("--from", "applies to --algo sparse only")
    cfg, dcfg = spec.train, spec.data_config
    strategy = build_strategy(cfg.algo, spec.algo_options)
    sparse = strategy if isinstance(strategy, Sparse) else None
    inner = sparse.inner if sparse else strategy
    dist_, device = _setup_distributed(cfg.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    emit = on_event if on_event is not None and dist_.main else (lambda e: None)  # rank 0 speaks for all

    def warn(message: str) -> None:
        emit(TrainEvent("warning", 0, cfg.steps, {"message": message}))

    train_files, val_files, channels, opts, summary = _prepare_data(spec)
    modality, shape = opts.modality, tuple(summary.shape)
    if dist_.main and not resume:
        _warn_upscaling(train_files, opts, warn)
    if cfg.batch_size % dist_.world:
        raise ConfigError("--batch-size", f"global batch {cfg.batch_size} is not divisible by {dist_.world} processes")
    field_ = build_field(spec.field.name, spec.field.field_config(modality, shape, channels))
    if sparse:
        theta = load_init(spec.init_from["path"]).params if not resume else random_init(field_, cfg.seed)  # resume: the checkpoint's
        mask: Mask | None = {k: m.to(device) for k, m in full_mask(theta).items()}
        field_ = Masked(field_, mask)
    else:
        theta, mask = random_init(field_, cfg.seed), None
    theta = {k: v.to(device) for k, v in theta.items()}
    step_fn = _compiled_step(strategy, field_, device, dist_.world) if cfg.compile else None
    model = _Outer(field_, strategy, theta).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start_step = 0
    if dist_.main:
        make_dirs(run)
    skipped, seconds, meta = 0, 0.0, {}
    if resume:
        meta = _load_checkpoint(run, model, opt, mask)
        start_step, skipped = int(meta["step"]), int(meta.get("skipped_steps", 0))
        seconds = float(meta.get("seconds", 0.0))  # training time accumulates over resumes
        if meta.get("train_files") != _files_digest(train_files, Path(spec.data)):
            raise ConfigError(spec.data, "the data folder changed since this run started; cannot resume exactly")
        if start_step >= cfg.steps:
            raise ConfigError(run, f"is complete at step {start_step} of {cfg.steps}: give --steps N "
                                   f"(more than {start_step}) to extend it")
        if dist_.main:
            _remove_stale_temporaries(run)
            _repair_checkpoint_json(run, meta)
            if train is not None:  # the new target outlives this session: a later --resume keeps it
                _write_json(run / RUN_FILE, spec.to_json())
    elif dist_.main:
        if restarted:
            warn(f"{run} stopped before its first checkpoint: starting it again")
            for name in (LOG_FILE, PREVIEW, INIT_FILE):
                (run / name).unlink(missing_ok=True)
            _remove_stale_temporaries(run)
        _write_json(run / RUN_FILE, spec.to_json())
    outer: nn.Module = model
    if dist_.world > 1:
        outer = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    coords = field_.unit_coords(shape, device=device)  # [N, d]: points, or NeRV's frames
    stream = BatchStream(
        SignalFolder(train_files, opts, channels), cfg.batch_size, cfg.seed, start_step, cfg.steps,
        rank=dist_.rank, world=dist_.world, workers=dcfg.decoding_workers(), pin=device.type == "cuda",
        strict=dcfg.strict, warn=warn,
    )
    val_targets = None
    if dist_.main and val_files:
        val_set = SignalFolder(val_files[: dcfg.val_limit], opts, channels)
        _, val_targets = load_all(val_set, list(range(len(val_set))), dcfg.strict, warn)
    test = AdaptConfig(steps=cfg.test_steps, lr=inner.config.inner_lr,
                       gamma=getattr(inner.config, "gamma", AdaptConfig.gamma), batch_size=cfg.batch_size)
    log = _Log(run, start_step) if dist_.main else None
    spr = sparse.config.steps_per_round if sparse else 1
    state = {"step": start_step, "val_psnr": None, "seconds": seconds, "skipped": skipped,
             "checkpoint": start_step if resume else None, "level": -(-start_step // spr)}  # level: rounds begun

    def validate(step: int) -> None:
        if val_targets is None:
            return
        emit(TrainEvent("validating", step, cfg.steps))
        curves = adaptation_curves(field_, {k: v.detach() for k, v in model.theta().items()}, val_targets,
                                   test, device, with_ssim=False)
        psnr = curves.psnr.mean(dim=1)  # [K + 1]
        state["val_psnr"] = round(psnr[-1].item(), 4)
        values = {"val_psnr": state["val_psnr"], "val_psnr_step0": round(psnr[0].item(), 4)}
        log.write("val", step, values)
        n = min(PREVIEW_SIGNALS, len(val_targets))
        _preview(run / PREVIEW, modality, val_targets[:n], curves.last[:n])
        emit(TrainEvent("val", step, cfg.steps, values))

    def current_init(step: int) -> MetaInit:
        sparsity = None
        if sparse:
            alive, total = mask_size(mask)
            c = sparse.config
            sparsity = {"level": state["level"], "rounds": c.rounds, "density": round(alive / total, 6), "alive": alive,
                        "weights": total, "prune": c.prune, "prune_fraction": c.prune_fraction,
                        "steps_per_round": c.steps_per_round, "val_psnr": state["val_psnr"], "from": spec.init_from}
        return MetaInit(
            field_name=spec.field.name, field_config=field_config_dict(field_),
            params={k: v.detach().cpu() for k, v in model.theta().items()},
            modality=modality, shape=shape, channels=channels, rate=summary.rate,
            algo={"name": cfg.algo, "config": strategy_config_dict(strategy)},
            test={"steps": test.steps, "lr": test.lr, "gamma": test.gamma},
            data=summary.to_json(),
            train={"steps": step, "batch_size": cfg.batch_size, "lr": cfg.lr, "clip": cfg.clip, "seed": cfg.seed,
                   "processes": dist_.world, "val_psnr": state["val_psnr"], "seconds": round(state["seconds"], 3),
                   "skipped_steps": state["skipped"]},
            coords=dict(CONVENTION),
            mask=None if mask is None else {k: m.cpu() for k, m in mask.items()},
            sparsity=sparsity,
        )

    def save(step: int) -> None:
        if not dist_.main:
            return
        summary.bad = len(stream.bad)
        extra = {"train_files": _files_digest(train_files, Path(spec.data)), "seconds": round(state["seconds"], 3),
                 "skipped_steps": state["skipped"], "micro_batch": micro}
        _save_checkpoint(run, step, model, opt, extra, mask)
        save_init(current_init(step), run / INIT_FILE)
        state["checkpoint"] = step
        emit(TrainEvent("checkpoint", step, cfg.steps, {"path": str(run / CHECKPOINT)}))

    def save_level(step: int) -> None:
        """--algo sparse: keep the initialisation as it is at the end of a round (or before the first)."""
        if dist_.main:
            make_dirs(run / LEVELS_DIR)
            save_init(current_init(step), run / LEVELS_DIR / f"level-{state['level']:02d}.safetensors")

    def begin_round(step: int) -> None:
        level = sparse.round_starts(step) if sparse else None
        if level is None:
            return
        adam = {name: opt.state.get(p, {}) for name, p in zip(model.names, model.params)}
        sparse.begin_round(level, model.theta(), mask, adam, cfg.seed)
        state["level"] = level
        values = {"level": level, "rounds": sparse.config.rounds, "density": round(density(mask), 6),
                  "alive": mask_size(mask)[0]}
        if dist_.main:
            log.write("round", step, values)
        emit(TrainEvent("round", step, cfg.steps, values))

    emit(TrainEvent("start", start_step, cfg.steps, {"data": summary.to_json(), "device": str(device),
                                                       "processes": dist_.world, "params": sum(p.numel() for p in model.params)}))
    # before validation: the probes measure from a heap that nothing larger has used yet
    micro = _choose_micro_batch(model, field_, coords, shape, channels, cfg, dist_.world, device,
                                meta.get("micro_batch"), emit, modality)
    if dist_.main and start_step == 0:
        validate(0)  # the untrained initialisation: the random-init baseline of every curve
        if sparse:
            save_level(0)  # the dense starting point, so every density down from 1 can be fitted
    interrupted = False
    estimate = _Estimate()
    window = time.perf_counter()
    window_steps = 0
    try:
        for step, batch in stream:  # step: 0-based index of the outer step about to run
            begin_round(step)
            t0 = time.perf_counter()
            targets = field_.to_units(batch.to(device, non_blocking=True))  # [b, N, out]
            opt.zero_grad(set_to_none=True)
            if step_fn is not None:
                try:
                    loss, mse = _accumulate_compiled(model, step_fn, coords, targets, micro)
                except Exception as err:  # noqa: BLE001  torch.compile unavailable (no compiler, unsupported op)
                    if state["step"] > start_step:
                        raise
                    first = (str(err).strip().splitlines() or [""])[0][:200]
                    warn(f"--compile: torch.compile failed ({type(err).__name__}: {first}); running eager")
                    step_fn = None
                    opt.zero_grad(set_to_none=True)
            if step_fn is None:
                loss, mse = _accumulate(outer, coords, targets, micro)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            if _finite(loss, grad_norm, dist_.world):
                opt.step()
            elif cfg.nan_policy == "skip":  # theta and Adam's moments stay as they were
                state["skipped"] += 1
                emit(TrainEvent("warning", step + 1, cfg.steps, {"message": (
                    f"step {step + 1}: non-finite loss ({loss.item():.3g}) or gradient norm ({grad_norm.item():.3g});"
                    f" update skipped ({state['skipped']} so far)")}))
            else:
                kept = ("no checkpoint yet" if state["checkpoint"] is None
                        else f"its checkpoint of step {state['checkpoint']} is kept")
                raise TrainingError(run, (
                    f"non-finite loss ({loss.item():.3g}) or gradient norm ({grad_norm.item():.3g}) at step {step + 1};"
                    f" stopped, {kept} (resume with a lower --lr, or --nan-policy skip)"))
            state["step"] = done = step + 1
            took = time.perf_counter() - t0
            state["seconds"] += took
            window_steps += 1
            emit(TrainEvent("tick", done, cfg.steps, {"loss": loss.item(), "seconds": took, "peak_memory": peak_memory(device),
                                                      "train_psnr": (-10 * torch.log10(mse.clamp_min(1e-10))).mean().item()}))
            estimate.add(took, done, cfg.steps, emit)
            if done % cfg.log_every == 0 or done == cfg.steps:
                stats = torch.stack([loss.detach(), (-10 * torch.log10(mse.clamp_min(1e-10))).mean()])
                if dist_.world > 1:
                    torch.distributed.all_reduce(stats)
                    stats /= dist_.world
                now = time.perf_counter()
                values = {"loss": stats[0].item(), "train_psnr": round(stats[1].item(), 4), "skipped_steps": state["skipped"],
                          "grad_norm": round(grad_norm.item(), 6), "steps_per_s": round(window_steps / (now - window), 4),
                          "peak_memory": peak_memory(device)}
                if sparse:
                    values.update(level=state["level"], density=round(density(mask), 6))
                window, window_steps = now, 0
                if dist_.main:
                    log.write("train", done, values)
                    emit(TrainEvent("step", done, cfg.steps, values))
            round_done = sparse is not None and sparse.round_ends(done) is not None
            if dist_.main and (done % cfg.val_every == 0 or done == cfg.steps or round_done):
                validate(done)
            if round_done:
                save_level(done)
            if done % cfg.ckpt_every == 0 and done != cfg.steps:
                save(done)
        if state["val_psnr"] is None and dist_.main:
            validate(state["step"])
        save(state["step"])
    except KeyboardInterrupt:
        interrupted = True
        save(state["step"])
    finally:
        if log is not None:
            log.close()
        if dist_.world > 1:
            torch.distributed.destroy_process_group()
    return TrainResult(run, run / INIT_FILE, state["step"], state["val_psnr"], interrupted, len(stream.bad),
                       state["skipped"])


def _finite(loss: Tensor, grad_norm: Tensor, world: int) -> bool:
    """Whether the step may be applied. Under DDP every process must agree, and the
    gradient norm (of the averaged gradient) is the same everywhere but each loss is local."""
    ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if world > 1:
        flag = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())
    return bool(ok)


__all__ = ["TrainEvent", "TrainResult", "meta_train", "read_run"]
