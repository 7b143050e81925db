"""``nfit meta-train``: learn an initialisation over a folder (or continue a run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from nfit.api import meta_train as train_run
from nfit.cli.app import EXIT_INTERRUPTED, app, run, say
from nfit.cli.options import (
    W0,
    Depth,
    Device,
    Field,
    FieldConfig,
    Modality,
    Overlap,
    Tile,
    TileFrames,
    Width,
    exponent,
    field_options,
)
from nfit.cli.progress import TrainProgress
from nfit.config import DEFAULT_RES, DEFAULT_SAMPLE_RATE, AlgoOptions, DataConfig, FieldOptions, TrainConfig
from nfit.meta.gradncp import GradNCPConfig
from nfit.meta.maml import MamlConfig
from nfit.meta.sparse import SparseConfig


@app.command("meta-train")
def meta_train(
    data: Optional[Path] = typer.Argument(None, help="Folder of training files (searched recursively).", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its checkpoint."),
    algo: str = typer.Option(TrainConfig.algo, help="gradncp, maml, or sparse (Meta-SparseINR, with --from)."),
    init_from: Optional[Path] = typer.Option(
        None, "--from", help="sparse: the dense run (or init file) to prune; its field, grid and channels are kept."),
    rounds: Optional[int] = typer.Option(None, help=f"sparse: pruning rounds [default: {SparseConfig.rounds}]."),
    prune_fraction: Optional[float] = typer.Option(
        None, help=f"sparse: share of the remaining weights removed per round [default: {SparseConfig.prune_fraction}]."),
    steps_per_round: Optional[int] = typer.Option(
        None, help=f"sparse: outer steps after each pruning [default: {SparseConfig.steps_per_round}]."),
    prune: Optional[str] = typer.Option(
        None, help=f"sparse: magnitude, or random (the baseline) [default: {SparseConfig.prune}]."),
    inner: Optional[str] = typer.Option(None, help="sparse: maml or gradncp inside each round [default: the dense run's]."),
    modality: Modality = None,
    res: Optional[int] = typer.Option(
        None, help="Images, video: shorter side resized, centre-cropped square "
        f"[default: {', '.join(f'{k} {v}' for k, v in DEFAULT_RES.items())}]."),
    sample_rate: Optional[int] = typer.Option(
        None, help=f"Audio: resampled to this many Hz [default: {DEFAULT_SAMPLE_RATE} for whole clips; with --tile, each file's own rate].", min=1),
    duration: float = typer.Option(DataConfig.duration, help="Audio: clips cropped or padded to this many seconds."),
    frames: int = typer.Option(DataConfig.frames, help="Video: frames per clip."),
    stride: int = typer.Option(DataConfig.stride, help="Video: keep every N-th frame."),
    tile: Tile = None,
    tile_frames: TileFrames = None,
    overlap: Overlap = None,
    steps: Optional[int] = typer.Option(None, help=f"Outer steps [default: {TrainConfig.steps}]."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Signals per outer step (over all processes)."),
    micro_batch: Optional[int] = typer.Option(
        TrainConfig.micro_batch, help="Signals per forward/backward: same step, less memory [default: the whole batch]."),
    lr: float = typer.Option(TrainConfig.lr, help="Outer Adam learning rate."),
    clip: float = typer.Option(TrainConfig.clip, help="Outer gradient-norm clipping."),
    seed: int = typer.Option(TrainConfig.seed, help="Seed of the initialisation, the split and the batch order."),
    inner_steps: Optional[int] = typer.Option(None, help=f"K inner steps [default: gradncp {GradNCPConfig.inner_steps}, maml {MamlConfig.inner_steps}]."),
    inner_lr: Optional[float] = typer.Option(None, help=f"Inner SGD step size alpha [default: {exponent(GradNCPConfig.inner_lr)}]."),
    first_order: bool = typer.Option(False, "--first-order", help="First-order inner loop (no second derivatives)."),
    gamma: Optional[float] = typer.Option(None, help=f"gradncp: fraction of points kept per inner step [default: {GradNCPConfig.gamma:g}]."),
    boot_steps: Optional[int] = typer.Option(None, help=f"gradncp: bootstrap steps L [default: {GradNCPConfig.boot_steps}]."),
    boot_lr: Optional[float] = typer.Option(None, help=f"gradncp: bootstrap step size [default: {exponent(GradNCPConfig.boot_lr)}]."),
    lam: Optional[float] = typer.Option(None, help=f"gradncp: weight of the bootstrap distance [default: {GradNCPConfig.lam:g}]."),
    field: Field = FieldOptions.name,
    width: Width = None,
    depth: Depth = None,
    w0: W0 = None,
    field_config: FieldConfig = None,
    channels: Optional[int] = typer.Option(
        None, help="Channels [default: images 1 if the first file is grey, else 3; audio the first file's; video 3]."),
    val: Optional[Path] = typer.Option(None, help="Validation folder [default: a split of DATA]."),
    val_fraction: float = typer.Option(DataConfig.val_fraction, help="Share of DATA held out for validation."),
    val_limit: int = typer.Option(DataConfig.val_limit, help="Validation signals evaluated each time."),
    val_every: int = typer.Option(TrainConfig.val_every, help="Validate every N outer steps."),
    test_steps: int = typer.Option(TrainConfig.test_steps, help="K_test: test-time steps of validation."),
    ckpt_every: int = typer.Option(TrainConfig.ckpt_every, help="Checkpoint every N outer steps."),
    ckpt_minutes: float = typer.Option(
        TrainConfig.ckpt_minutes, help="... or every M minutes, whichever comes first (a kill loses at most that)."),
    log_every: int = typer.Option(TrainConfig.log_every, help="Log every N outer steps."),
    workers: Optional[int] = typer.Option(DataConfig.workers, help="Decoding processes [default: min(4, CPU cores)]."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file instead of skipping it."),
    nan_policy: Optional[str] = typer.Option(
        None, help=f"A non-finite loss: stop (keep the last checkpoint) or skip the update and count it "
        f"[default: {TrainConfig.nan_policy}; with --resume: the run's]."),
    device: Device = TrainConfig.device,
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the whole outer step (maml, gradncp; one process); on CUDA also TF32 matmuls."),
    force: bool = typer.Option(
        False, "--force", help="Write into a folder that holds files of a run's names but no run (they are replaced)."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Keep no activations of the inner steps and outer loss; recompute "
        "them in the backward pass: the same steps in a fraction of the memory, about a third more time."),
) -> None:
    """Learn an initialisation over a folder: `nfit meta-train ./faces -o runs/faces`.

    Folders of images, audio clips or videos: every signal is conformed to one grid
    (--res; --sample-rate and --duration; --frames, --stride and --res). With --tile T,
    every signal is instead one random T x T tile (T samples of audio at --sample-rate)
    of a file at its own scale, never resized: an initialisation for the tiles that
    `nfit fit` cuts files of any size into.

    The result is RUN/init.safetensors, for `nfit fit --init`. Ctrl-C saves a checkpoint;
    `nfit meta-train --resume RUN` continues it exactly (with the run's own settings;
    --steps may extend it). Multi-GPU: `torchrun --nproc-per-node N -m nfit meta-train ...`.

    Meta-SparseINR: `nfit meta-train DATA -o SPARSE --algo sparse --from DENSE_RUN --rounds 20`
    keeps every level in SPARSE/levels/; fit one with `nfit fit IMG --init SPARSE --density 0.1`.
    """
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for all

    def job():
        train = TrainConfig(algo=algo, batch_size=batch_size, micro_batch=micro_batch, lr=lr, clip=clip, seed=seed,
                            log_every=log_every, val_every=val_every, ckpt_every=ckpt_every, ckpt_minutes=ckpt_minutes,
                            test_steps=test_steps,
                            device=device, compile=compile_,
                            nan_policy=TrainConfig.nan_policy if nan_policy is None else nan_policy)
        data_config = DataConfig(modality=modality, res=res, sample_rate=sample_rate, duration=duration, frames=frames,
                                 stride=stride, channels=channels, val_fraction=val_fraction, val_limit=val_limit,
                                 workers=workers, strict=strict, tile=tile, tile_frames=tile_frames, overlap=overlap)
        options = AlgoOptions(inner_steps, inner_lr, True if first_order else None,
                              True if gradient_checkpointing else None, gamma, boot_steps, boot_lr, lam, rounds,
                              prune_fraction, steps_per_round, prune, inner)
        with TrainProgress(enabled=main_rank) as progress:
            if resume is not None:
                return train_run(data, output, resume=resume, steps=steps, nan_policy=nan_policy, on_event=progress)
            return train_run(data, output, steps=steps, train=train, data_config=data_config,
                             field_options=field_options(field, width, depth, w0, field_config), algo_options=options,
                             val_dir=val, init_from=init_from, on_event=progress, force=force)

    result = run(job)
    if not main_rank:
        return
    if result.interrupted:
        say(f"nfit: interrupted at step {result.step}; checkpoint saved. Continue with: nfit meta-train --resume {result.run}")
        raise typer.Exit(EXIT_INTERRUPTED)
    val_ = "-" if result.val_psnr is None else f"{result.val_psnr:.2f} dB"
    bad = f", {result.bad_files} unreadable file(s) skipped" if result.bad_files else ""
    bad += f", {result.skipped_steps} non-finite step(s) skipped" if result.skipped_steps else ""
    say(f"wrote {result.init} (step {result.step}, validation PSNR {val_}{bad})")
