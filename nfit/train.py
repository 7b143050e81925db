"""Meta-training: the outer loop, the same for every strategy.

Each outer step takes a batch of signals conformed to one grid, asks the strategy
(nfit.meta) for the outer loss of the shared initialisation theta_0 on it, and
takes an Adam step on theta_0. Strategies that change the field as they train
(Meta-SparseINR's pruning rounds) do so through the hooks of
:class:`nfit.meta.base.Phases`; the loop has no case for any one of them. The run
directory, its files and their formats belong to :mod:`nfit.runs`.

Data-parallel under torchrun: every process takes a contiguous slice of the global
batch, DistributedDataParallel averages the gradients (so the step equals a single
process on the whole batch), and only rank 0 validates and writes files.

Faults. A non-finite loss or gradient norm never reaches the parameters: the run
stops with its last checkpoint as the result, or (``nan_policy="skip"``) the step's
update is dropped and counted. A failed write (a full disk) is an OutputError
naming the file, and the files written before it stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nfit.atomic import make_dirs
from nfit.config import (
    TILE_ADAM_LR,
    AdaptConfig,
    AlgoOptions,
    DataConfig,
    FieldOptions,
    SignalOptions,
    TrainConfig,
    tile_field,
)
from nfit.data import BatchStream, DataSummary, SignalFolder, TileFolder, guess_channels, load_all, scan_media, split_files
from nfit.device import flush_denormals, peak_memory, resolve_device, tune_cpu_allocator
from nfit.errors import ConfigError, FieldFileError, TrainingError
from nfit.evaluation import adaptation_curves
from nfit.fieldfile import MetaInit, save_init
from nfit.fields import Field, Params, build_field, field_config, field_config_dict
from nfit.fit import random_init
from nfit.memory import gib, measure_step
from nfit.meta import Strategy, build_strategy, strategy_config_dict
from nfit.meta.compiled import COMPILABLE, outer_step
from nfit.runs import (
    CHECKPOINT,
    INIT_FILE,
    LOG_FILE,
    PREVIEW,
    FileIndex,
    MetricsLog,
    RunSpec,
    check_run_dir,
    files_digest,
    level_file,
    load_checkpoint,
    load_init,
    read_file_index,
    read_run,
    remove_stale_temporaries,
    repair_checkpoint_json,
    save_checkpoint,
    write_file_index,
    write_preview,
    write_psnr_plot,
    write_run,
)
from nfit.signals import CONVENTION, MODALITIES
from nfit.tiling import Tiling

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
    d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
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


@dataclass
class _Data:
    """A run's files and the grid they are conformed to."""

    train_files: list[Path]
    val_files: list[Path]
    channels: int
    opts: SignalOptions  # how each file is read and conformed
    summary: DataSummary
    tiling: Tiling | None = None  # tiles: each signal is a random tile of a file at its own scale

    def dataset(self, files: list[Path]) -> SignalFolder | TileFolder:
        if self.tiling is None:
            return SignalFolder(files, self.opts, self.channels)
        return TileFolder(files, self.opts, self.channels, self.tiling.tile)

    @property
    def modality(self) -> str:
        return self.opts.modality

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.summary.shape)


def _list_data(spec: RunSpec, run: Path, resume: bool) -> FileIndex:
    """The run's files: as listed when it began (RUN/files.json) when resuming, else listed now."""
    index = read_file_index(run, spec.data, spec.val_dir) if resume else None
    if index is not None:
        return index
    root = Path(spec.data)
    modality, files = scan_media(root, spec.data_config.modality)
    index = FileIndex(str(root), modality, [str(f.relative_to(root)) for f in files])
    if spec.val_dir is not None:
        val_root = Path(spec.val_dir)
        index.val_root, index.val_files = str(val_root), [str(f.relative_to(val_root)) for f in scan_media(val_root, modality)[1]]
    return index.stamp()


def _prepare_data(spec: RunSpec, index: FileIndex) -> _Data:
    cfg = spec.data_config
    root = Path(spec.data)
    modality = index.modality
    files, listed_val = index.paths()
    if listed_val is not None:
        train_files, val_files = files, listed_val
    elif cfg.val_fraction > 0:
        train_files, val_files = split_files(files, cfg.val_fraction, spec.train.seed)
    else:
        train_files, val_files = files, []
    channels = cfg.channels or guess_channels(files, modality)
    tiles = cfg.tiles()
    tiling = None if tiles is None else Tiling(*tiles.sizes(modality))
    if tiling is None:
        opts = cfg.signal_options(modality)
        shape = MODALITIES[modality].dataset_shape(opts)
    else:  # tiles of the files at their own scale: the grid is the tile's
        opts, shape = cfg.tile_options(modality, tiling.tile[0]), tiling.tile
    summary = DataSummary(str(root), len(files), len(train_files), len(val_files), opts.res, channels, 0,
                          modality, list(shape), opts.sample_rate if modality == "audio" else None,
                          None if tiling is None else list(tiling.tile))
    return _Data(train_files, val_files, channels, opts, summary, tiling)


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


def _from_dense(spec: RunSpec, path: str | Path) -> None:
    """--algo sparse: take the field, grid, channels and (unless given) the inner algorithm and
    its hyperparameters from the dense initialisation, and fix the total steps to the schedule."""
    dense = load_init(path)
    if dense.mask is not None or dense.algo.get("name") == "sparse":
        raise ConfigError("--from", f"{path} is already sparse: start from a dense initialisation")
    spec.init_from = {"path": str(path), "sha256": dense.sha256}
    spec.field = FieldOptions(dense.field_name, extra=dict(dense.field_config))
    if dense.tiling is not None:  # tiles of the dense run's size, from files at their own scale
        t = dense.tiling
        spec.data_config = dataclasses.replace(
            spec.data_config, modality=dense.modality, channels=dense.channels, res=None, tile=t.tile[-1],
            tile_frames=t.tile[0] if len(t.tile) == 3 else None, overlap=t.overlap[-1],
            **({"sample_rate": round(dense.rate)} if dense.rate is not None else {}))
    else:
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


def _finite(loss: Tensor, grad_norm: Tensor, world: int) -> bool:
    """Whether the step may be applied. Under DDP every process must agree, and the
    gradient norm (of the averaged gradient) is the same everywhere but each loss is local."""
    ok = torch.isfinite(loss) & torch.isfinite(grad_norm)
    if world > 1:
        flag = ok.to(torch.int32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())
    return bool(ok)


def _spec_for(data, run: Path, train: TrainConfig | None, data_config, field_options, algo_options, val_dir, resume: bool,
              init_from, nan_policy, force: bool) -> tuple[RunSpec, bool]:
    """The run's configuration: run.json's when resuming (with a new target or NaN policy), else a new one;
    and whether ``run`` holds a run that stopped before its first checkpoint (it starts again, also
    under ``resume``: from step 0 with its own configuration, which loses nothing that was saved)."""
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
        return spec, not (run / CHECKPOINT).is_file()
    if data is None:
        raise ConfigError(None, "give a data folder (or --resume RUN)")
    restarted = check_run_dir(run, [data, val_dir], force)
    train = train or TrainConfig()
    if nan_policy is not None:
        train = dataclasses.replace(train, nan_policy=nan_policy)
    options = algo_options.given() if isinstance(algo_options, AlgoOptions) else dict(algo_options or {})
    spec = RunSpec(str(data), None if val_dir is None else str(val_dir), train,
                   data_config or DataConfig(), field_options or FieldOptions(), options)
    if spec.train.algo == "sparse":
        if init_from is None:
            raise ConfigError("--from", "--algo sparse starts from a dense initialisation: give --from DENSE_RUN")
        _from_dense(spec, init_from)
    elif init_from is not None:
        raise ConfigError("--from", "applies to --algo sparse only")
    return spec, restarted


@flush_denormals()
def meta_train(
    data: str | Path | None,
    run: str | Path,
    train: TrainConfig | None = None,
    data_config: DataConfig | None = None,
    field_options: FieldOptions | None = None,
    algo_options: AlgoOptions | dict[str, Any] | None = None,
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
    started again by the same call, or by ``resume``. ``train.micro_batch=None`` measures the memory of
    a step first (nfit.memory) and takes the largest micro-batch that fits.

    Raises :class:`TrainingError` when a step's loss or gradient is not finite under
    ``nan_policy="stop"``: nothing is written after the last checkpoint, which stays
    the run's result and the point ``resume`` continues from.
    """
    run = Path(run)
    spec, restarted = _spec_for(data, run, train, data_config, field_options, algo_options, val_dir, resume, init_from,
                                nan_policy, force)
    resume = resume and not restarted  # killed before its first checkpoint: it starts again from run.json
    trainer = _Trainer(spec, run, resume, on_event)
    trainer.open(restarted, new_target=resume and train is not None)
    return trainer.train()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a job scheduler's stop, ``kill``) ends a run as Ctrl-C does: a checkpoint at the
    step reached, then a clean exit. Python leaves SIGTERM fatal and skips SIGINT in a process
    started in the background, where schedulers and nohup run training."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        # A scheduler signals every process of the job: the data workers die of it too, and PyTorch's
        # SIGCHLD handler would raise about them while the checkpoint is written. Their end is part of
        # this stop; a second SIGTERM must not cut the checkpoint short either.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt), signal.getsignal(signal.SIGCHLD)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGCHLD, previous[1])


class _Trainer:
    """One run of the outer loop. What changes as it trains (step, time, last validation,
    the sparse level) are its attributes; each method is one part of a step."""

    def __init__(self, spec: RunSpec, run: Path, resume: bool, on_event: Callable[[TrainEvent], None] | None):
        self.spec, self.run, self.resume, self.cfg = spec, run, resume, spec.train
        self.strategy = build_strategy(self.cfg.algo, spec.algo_options)
        self.dist, self.device = _setup_distributed(self.cfg.device)
        tune_cpu_allocator(self.device)
        self.on_event = on_event if on_event is not None and self.dist.main else None  # rank 0 speaks for all
        self.index = _list_data(spec, run, resume)
        self.data = _prepare_data(spec, self.index)
        if self.dist.main and not resume and self.data.tiling is None:  # tiles are cut at the files' own scale
            _warn_upscaling(self.data.train_files, self.data.opts, self.warn)
        if self.cfg.batch_size % self.dist.world:
            raise ConfigError("--batch-size", f"global batch {self.cfg.batch_size} is not divisible by {self.dist.world} processes")
        self._build_model()
        self.step = self.start_step = 0
        self.seconds, self.skipped, self.val_psnr, self.checkpoint_step = 0.0, 0, None, None
        self.micro, self.log, self.val_targets = None, None, None

    # ---------------------------------------------------------------- set-up

    def _build_model(self) -> None:
        spec, d = self.spec, self.data
        defaults = None if d.tiling is None else tile_field(d.modality)  # tiles: the small field nfit fit gives each tile
        field_ = build_field(spec.field.name, field_config(spec.field, d.modality, d.shape, d.channels, defaults))
        if spec.init_from is not None and not self.resume:
            theta = load_init(spec.init_from["path"]).params  # --algo sparse starts from the dense result
        else:
            theta = random_init(field_, self.cfg.seed)  # resuming: the checkpoint's values replace these
        theta = {k: v.to(self.device) for k, v in theta.items()}
        self.field, self.mask = self.strategy.prepare(field_, theta)
        self.step_fn = _compiled_step(self.strategy, self.field, self.device, self.dist.world) if self.cfg.compile else None
        self.model = _Outer(self.field, self.strategy, theta).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.outer: nn.Module = self.model
        if self.dist.world > 1:
            self.outer = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.coords = self.field.unit_coords(d.shape, device=self.device)  # [N, d]: points, or NeRV's frames
        dense = self.strategy.dense.config
        self.test = AdaptConfig(steps=self.cfg.test_steps, lr=dense.inner_lr,
                                gamma=getattr(dense, "gamma", AdaptConfig.gamma), batch_size=self.cfg.batch_size)

    def open(self, restarted: bool, new_target: bool) -> None:
        """Create or continue the run directory: the checkpoint's state when resuming, run.json when new."""
        run, main = self.run, self.dist.main
        if main:
            make_dirs(run)
        meta: dict[str, Any] = {}
        if self.resume:
            meta = self._restore()
            if main:
                remove_stale_temporaries(run)
                repair_checkpoint_json(run, meta)
                if new_target:  # the new target outlives this session: a later --resume keeps it
                    write_run(run, self.spec)
        elif main:
            if restarted:
                self.warn(f"{run} stopped before its first checkpoint: starting it again")
                for name in (LOG_FILE, PREVIEW, INIT_FILE):
                    (run / name).unlink(missing_ok=True)
                remove_stale_temporaries(run)
            write_run(run, self.spec)
            write_file_index(run, self.index)
        self.level = self.strategy.level_at(self.start_step)
        self.preferred_micro = meta.get("micro_batch")
        self._open_data()

    def _restore(self) -> dict[str, Any]:
        """theta, Adam's state, the RNG and the mask from the checkpoint; returns its metadata."""
        model, cfg = self.model, self.cfg
        ckpt = load_checkpoint(self.run, model.names, list(self.mask or {}))
        try:
            with torch.no_grad():
                for name, p in zip(model.names, model.params):
                    p.copy_(ckpt.theta[name])
                    if name in ckpt.adam:
                        self.opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in ckpt.adam[name].items()}
            torch.set_rng_state(ckpt.rng)
            for k, m in (self.mask or {}).items():
                m.copy_(ckpt.mask[k])
        except RuntimeError as err:
            raise FieldFileError(self.run / CHECKPOINT, f"checkpoint does not match this run ({err})") from None
        meta = ckpt.meta
        self.start_step = self.step = int(meta["step"])
        self.checkpoint_step = self.start_step
        self.skipped, self.seconds = int(meta.get("skipped_steps", 0)), float(meta.get("seconds", 0.0))
        if meta.get("train_files") != files_digest(self.data.train_files, Path(self.spec.data)):
            raise ConfigError(self.spec.data, "the data folder changed since this run started; cannot resume exactly")
        if self.start_step >= cfg.steps:
            raise ConfigError(self.run, f"is complete at step {self.start_step} of {cfg.steps}: give --steps N "
                                        f"(more than {self.start_step}) to extend it")
        return meta

    def _open_data(self) -> None:
        d, cfg, dcfg = self.data, self.cfg, self.spec.data_config
        self.stream = BatchStream(
            d.dataset(d.train_files), cfg.batch_size, cfg.seed, self.start_step, cfg.steps,
            rank=self.dist.rank, world=self.dist.world, workers=dcfg.decoding_workers(), pin=self.device.type == "cuda",
            strict=dcfg.strict, warn=self.warn,
        )
        if self.dist.main and d.val_files:
            val_set = d.dataset(d.val_files[: dcfg.val_limit])
            self.val_targets = load_all(val_set, list(range(len(val_set))), dcfg.strict, self.warn)[1]
        self.log = MetricsLog(self.run, self.start_step) if self.dist.main else None

    # ---------------------------------------------------------------- events, validation, files

    def emit(self, kind: str, step: int, values: dict[str, Any] | None = None) -> None:
        if self.on_event is not None:
            self.on_event(TrainEvent(kind, step, self.cfg.steps, values or {}))

    def warn(self, message: str, step: int = 0) -> None:
        self.emit("warning", step, {"message": message})

    def theta(self) -> Params:
        return {k: v.detach() for k, v in self.model.theta().items()}

    def validate(self, step: int) -> None:
        """Fit the validation signals from theta_0 (K_test re-scaled steps): PSNR at step 0 and K, and the preview."""
        if self.val_targets is None:
            return
        self.emit("validating", step)
        curves = adaptation_curves(self.field, self.theta(), self.val_targets, self.test, self.device, with_ssim=False)
        psnr = curves.psnr.mean(dim=1)  # [K + 1]
        self.val_psnr = round(psnr[-1].item(), 4)
        values = {"val_psnr": self.val_psnr, "val_psnr_step0": round(psnr[0].item(), 4)}
        self.log.write("val", step, values)
        n = min(PREVIEW_SIGNALS, len(self.val_targets))
        write_preview(self.run / PREVIEW, self.data.modality, self.val_targets[:n], curves.last[:n])
        write_psnr_plot(self.run)
        self.emit("val", step, values)

    def current_init(self, step: int) -> MetaInit:
        spec, d, cfg = self.spec, self.data, self.cfg
        phase = self.strategy.describe(self.mask, self.level)
        return MetaInit(
            field_name=spec.field.name, field_config=field_config_dict(self.field),
            params={k: v.cpu() for k, v in self.theta().items()},
            modality=d.modality, shape=d.shape, channels=d.channels, rate=d.summary.rate,
            algo={"name": cfg.algo, "config": strategy_config_dict(self.strategy)},
            test={"steps": self.test.steps, "lr": self.test.lr, "gamma": self.test.gamma,
                  **({} if d.tiling is None else {"adam_lr": TILE_ADAM_LR})},
            data=d.summary.to_json(),
            train={"steps": step, "batch_size": cfg.batch_size, "lr": cfg.lr, "clip": cfg.clip, "seed": cfg.seed,
                   "processes": self.dist.world, "val_psnr": self.val_psnr, "seconds": round(self.seconds, 3),
                   "skipped_steps": self.skipped},
            coords=dict(CONVENTION),
            mask=None if self.mask is None else {k: m.cpu() for k, m in self.mask.items()},
            sparsity=None if phase is None else {**phase, "val_psnr": self.val_psnr, "from": spec.init_from},
            tiling=d.tiling,
        )

    def save(self, step: int) -> None:
        """A checkpoint and the result (init.safetensors) as of ``step``."""
        if not self.dist.main:
            return
        self.data.summary.bad = len(self.stream.bad)
        extra = {"train_files": files_digest(self.data.train_files, Path(self.spec.data)),
                 "seconds": round(self.seconds, 3), "skipped_steps": self.skipped, "micro_batch": self.micro}
        adam = {name: self.opt.state.get(p, {}) for name, p in zip(self.model.names, self.model.params)}
        save_checkpoint(self.run, step, self.theta(), adam, extra, self.mask)
        save_init(self.current_init(step), self.run / INIT_FILE)
        self.checkpoint_step, self.saved_at = step, time.monotonic()
        self.emit("checkpoint", step, {"path": str(self.run / CHECKPOINT), "time": time.strftime("%H:%M:%S")})

    def save_level(self, step: int) -> None:
        """The initialisation at the end of a phase (or before the first), for strategies that keep levels."""
        if self.dist.main:
            path = level_file(self.run, self.level)
            make_dirs(path.parent)
            save_init(self.current_init(step), path)

    # ---------------------------------------------------------------- the loop

    def train(self) -> TrainResult:
        d = self.data
        self.emit("start", self.start_step, {"data": d.summary.to_json(), "device": str(self.device),
                                             "processes": self.dist.world,
                                             "params": sum(p.numel() for p in self.model.params)})
        # before validation: the probes measure from a heap that nothing larger has used yet
        self.micro = _choose_micro_batch(self.model, self.field, self.coords, d.shape, d.channels, self.cfg,
                                         self.dist.world, self.device, self.preferred_micro, self.emit_event, d.modality)
        if self.dist.main and self.start_step == 0:
            self.validate(0)  # the untrained initialisation: the random-init baseline of every curve
            if self.strategy.keeps_levels:
                self.save_level(0)  # the dense starting point, so every density down from 1 can be fitted
        interrupted = False
        self.estimate, self.window = _Estimate(), (time.perf_counter(), 0)
        self.saved_at = time.monotonic()  # checkpoints by time count from the first step
        # the checkpoint of an interrupted run, too, is written while SIGTERM's handling holds (see below)
        with _terminate_as_interrupt():
            try:
                for step, batch in self.stream:  # step: 0-based index of the outer step about to run
                    self.outer_step(step, batch)
                    self.after_step(step + 1)
                if self.val_psnr is None and self.dist.main:
                    self.validate(self.step)
                self.save(self.step)
            except KeyboardInterrupt:
                interrupted = True
                self.save(self.step)
            finally:
                if self.log is not None:
                    self.log.close()
                if self.dist.world > 1:
                    torch.distributed.destroy_process_group()
        return TrainResult(self.run, self.run / INIT_FILE, self.step, self.val_psnr, interrupted, len(self.stream.bad),
                           self.skipped)

    def emit_event(self, event: TrainEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def outer_step(self, step: int, batch: Tensor) -> None:
        """Outer step ``step`` (0-based) on ``batch`` [b, *shape, C]: the strategy's phase hook, the loss and
        its gradient in micro-batches, clipping, and Adam's update unless the loss or gradient is not finite."""
        cfg = self.cfg
        adam = {name: self.opt.state.get(p, {}) for name, p in zip(self.model.names, self.model.params)}
        started = self.strategy.begin_step(step, self.model.theta(), self.mask, adam, cfg.seed)
        if started is not None:
            self.level = started["level"]
            if self.dist.main:
                self.log.write("round", step, started)
            self.emit("round", step, started)
        t0 = time.perf_counter()
        targets = self.field.to_units(batch.to(self.device, non_blocking=True))  # [b, N, out]
        self.opt.zero_grad(set_to_none=True)
        loss, mse = self._loss_and_gradient(targets)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        if _finite(loss, grad_norm, self.dist.world):
            self.opt.step()
        elif cfg.nan_policy == "skip":  # theta and Adam's moments stay as they were
            self.skipped += 1
            self.warn(f"step {step + 1}: non-finite loss ({loss.item():.3g}) or gradient norm ({grad_norm.item():.3g});"
                      f" update skipped ({self.skipped} so far)", step + 1)
        else:
            kept = ("no checkpoint yet" if self.checkpoint_step is None
                    else f"its checkpoint of step {self.checkpoint_step} is kept")
            raise TrainingError(self.run, (
                f"non-finite loss ({loss.item():.3g}) or gradient norm ({grad_norm.item():.3g}) at step {step + 1};"
                f" stopped, {kept} (resume with a lower --lr, or --nan-policy skip)"))
        self.step = step + 1
        since, steps = self.window
        self.window = (since, steps + 1)
        took = time.perf_counter() - t0
        self.seconds += took
        self.last = (loss, mse, grad_norm)
        self.emit("tick", self.step, {"loss": loss.item(), "seconds": took, "peak_memory": peak_memory(self.device),
                                      "train_psnr": _psnr(mse).mean().item()})
        self.estimate.add(took, self.step, cfg.steps, self.emit_event)

    def _loss_and_gradient(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's mean outer loss and per-signal MSE, its gradient in theta's .grad: compiled, or eager."""
        if self.step_fn is not None:
            try:
                return _accumulate_compiled(self.model, self.step_fn, self.coords, targets, self.micro)
            except Exception as err:  # noqa: BLE001  torch.compile unavailable (no compiler, unsupported op)
                if self.step > self.start_step:
                    raise
                first = (str(err).strip().splitlines() or [""])[0][:200]
                self.warn(f"--compile: torch.compile failed ({type(err).__name__}: {first}); running eager")
                self.step_fn = None
                self.opt.zero_grad(set_to_none=True)
        return _accumulate(self.outer, self.coords, targets, self.micro)

    def after_step(self, done: int) -> None:
        """Log every ``log_every`` steps; validate, keep a level and checkpoint when it is time."""
        cfg = self.cfg
        if done % cfg.log_every == 0 or done == cfg.steps:
            self._log_step(done)
        phase_done = self.strategy.phase_ends(done)
        if self.dist.main and (done % cfg.val_every == 0 or done == cfg.steps or phase_done):
            self.validate(done)
        if phase_done:
            self.save_level(done)
        due = done % cfg.ckpt_every == 0 or time.monotonic() - self.saved_at >= 60 * cfg.ckpt_minutes
        if due and done != cfg.steps:
            self.save(done)

    def _log_step(self, done: int) -> None:
        loss, mse, grad_norm = self.last
        stats = torch.stack([loss.detach(), _psnr(mse).mean()])
        if self.dist.world > 1:
            torch.distributed.all_reduce(stats)
            stats /= self.dist.world
        now = time.perf_counter()
        since, steps = self.window
        values = {"loss": stats[0].item(), "train_psnr": round(stats[1].item(), 4), "skipped_steps": self.skipped,
                  "grad_norm": round(grad_norm.item(), 6), "steps_per_s": round(steps / (now - since), 4),
                  "peak_memory": peak_memory(self.device), **self.strategy.progress(self.mask, self.level)}
        self.window = (now, 0)
        if self.dist.main:
            self.log.write("train", done, values)
            self.emit("step", done, values)


def _psnr(mse: Tensor) -> Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))


__all__ = ["TrainEvent", "TrainResult", "meta_train", "read_run"]
