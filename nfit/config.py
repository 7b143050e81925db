"""Every user-facing default, written once. The CLI and the Python API both read these.

A leaf: it imports nothing of nfit but its errors, so every layer may read it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from nfit.errors import ConfigError

# Limits on what an input file may declare, checked before anything is allocated:
# a few bytes of header must never be able to ask for gigabytes of memory.
MAX_IMAGE_PIXELS = 1 << 27  # 134 MP; below Pillow's own decompression-bomb error (179 MP), so ours speaks first
MAX_AUDIO_SAMPLES = 1 << 30  # frames x channels: 3.4 h of 44.1 kHz stereo, 4 GiB as float32
# A decoded video clip, frames x height x width x 3 float32 values (16 GiB): what is kept,
# not the file's length, so 16 frames of a long film pass while a tiny file declaring
# millions of frames does not. One frame's size is held to MAX_IMAGE_PIXELS.
MAX_VIDEO_VALUES = 1 << 32
MAX_HEADER_BYTES = 16 << 20  # a safetensors header (tensor table + metadata); real files use a few kB
MAX_METADATA_BYTES = 1 << 20  # the nfit JSON inside it; real files use 1-3 kB
MAX_GRID_SAMPLES = 1 << 34  # a .nf declaring a bigger signal is corrupt, not data
MAX_FIELD_SIZE = 1 << 16  # any width, depth or feature count a field file may declare
MAX_SSIM_SAMPLES = 1 << 25  # a fit's summary gives SSIM up to 11 MP RGB: beyond, its filters need GBs
MAX_TILES = 1 << 24  # tiles a .nf may declare (a 134 MP photo in 32 px tiles has ~170k)

# Dataset grids by modality: every signal of a meta-learning batch is conformed to one.
DEFAULT_RES = {"image": 178, "video": 128}  # CelebA's 178; UCF-101 clips at 128x128 (GradNCP)
DEFAULT_SAMPLE_RATE = 16_000  # LibriSpeech's rate
DEFAULT_DURATION = 1.0  # seconds (GradNCP: 1 s and 3 s)
DEFAULT_FRAMES = 16  # frames per clip (GradNCP: 128x128x16)

NAN_POLICIES = ("stop", "skip")

# Meta-training picks the micro-batch whose measured step needs at most this share of
# the memory free when it starts: the rest is headroom for the CPU heap's fragmentation
# (up to ~36% measured, BENCHMARKS.md), decoding workers and other programs.
MEMORY_FRACTION = 0.7

# Fitting from an initialisation at a size this many times (or this fraction of) the grid
# it was trained on is warned about: a learned initialisation helps signals of its own
# size, and measured at 128 px from a 32 px one it lost 2.5 dB to fitting from random.
INIT_SIZE_TOLERANCE = 2.0


@dataclass
class FitConfig:
    """Fitting one batch of signals from a random initialisation with Adam."""

    steps: int = 500
    lr: float = 1e-3
    seed: int = 0
    target_psnr: float | None = None  # stop a signal once its PSNR (dB) reaches this
    seconds: float | None = None  # stop a signal's fit after this much wall time, keeping its best so far
    # Adam's step size rises linearly over this many steps: its first steps move every weight by about
    # lr whatever its gradient, which throws a learned initialisation far from where it was
    warmup: int = 0
    batch_size: int = 16  # signals of equal shape fitted together
    # Coordinates x signals per forward/backward: larger grids are accumulated in
    # chunks, giving the exact full-grid gradient in bounded memory.
    chunk: int = 1 << 18
    device: str = "auto"

    def __post_init__(self):
        if self.steps < 0:
            raise ConfigError("--steps", "must be >= 0")
        if not self.lr > 0:
            raise ConfigError("--lr", "must be positive")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", "must be >= 1")
        if self.chunk < 1:
            raise ConfigError("chunk", "must be >= 1")
        if self.seconds is not None and not self.seconds > 0:
            raise ConfigError("--seconds", "must be positive")


# Tiled fields (nfit.tiling): a signal cut into tiles of one size, each with its own small field.
# Tile size, overlap, the tile field and the fitting defaults were chosen by benchmarks/bench_tiles.py
# on held-out photos (BENCHMARKS.md, "Tiled fields"). Sizes are in samples, array order.
TILES = {"image": (32, 32), "audio": (1024,), "video": (8, 32, 32)}
TILE_FIELD = {"width": 32, "depth": 4}  # 2,307 parameters for an RGB image tile
# An audio window spans [-1, 1] over 1,024 samples, not a clip's 16,000: time is scaled by 10, not 50
# (from random, 60 steps on 5 speech and music clips: 54.0 dB, against 27.1 dB at 50; 6 to 15 within 2 dB)
TILE_FIELD_BY_MODALITY = {"audio": {"coord_scale": 10.0}}
TILE_FIT = {"lr": 3e-3, "steps": 300, "target_psnr": 38.0, "seconds": None}  # from random, per file
TILE_ADAM_LR = 1e-3  # Adam after a tile initialisation's SGD steps (its init file records it)
TILE_WARMUP = 10  # ...with its step size rising over 10 steps: without, its first steps cost 5 dB (BENCHMARKS.md)
TILE_CACHE_BYTES = 1 << 30  # meta-train --tile: decoded files each data worker keeps
TILE_SOURCE_FRAMES = 4  # meta-train --tile on video: blocks are cut from the first 4 blocks' worth of frames
# Tiles fitted at once hold at most this many samples: 2,048 image tiles of 32x32, 256 video blocks of
# 8x32x32, 8 NeRV chunks of 16 frames of 128x128; bounds the activations and the optimiser's memory
TILE_BATCH_SAMPLES = 1 << 21
# Fields decoding whole frames (NeRV) keep clip-level fields: a longer video is cut along time into
# chunks of 16 frames (the clips of the GradNCP reference), each a field of the whole frame
FRAME_CHUNK = 16



# A field that covers a whole signal but is cut along time into clips (video: NeRV, latent grids) fits each clip
# by plain Adam (nfit.tiled), not for its rate: a latent grid's autoregressive model of its latents
# (nfit.arm), which only a rate fit trains, is left out (its latents are coded as format 5 did).
CLIP_FIELD = {"arm": 0}


def tile_field(modality: str) -> dict:
    """The defaults of the small field each tile of ``modality`` gets."""
    return {**TILE_FIELD, **TILE_FIELD_BY_MODALITY.get(modality, {})}

@dataclass
class TileConfig:
    """How signals are cut into tiles. ``tile`` is the side of an image tile or of a video block's
    frames, or an audio window's length; 0 fits one field to the whole signal; None: the modality's
    default (``TILES``). ``overlap``: samples neighbours share (default an eighth of the tile; video
    blocks share a quarter of their frames)."""

    tile: int | None = None
    frames: int | None = None  # video: frames per block
    overlap: int | None = None
    batch: int = 2048  # tiles fitted at once: bounds the optimiser's memory on huge signals

    def __post_init__(self):
        for name in ("tile", "frames", "overlap"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name}", "must be >= 0")
        if self.frames == 0:
            raise ConfigError("--frames", "must be >= 1")
        if self.batch < 1:
            raise ConfigError("tile batch", "must be >= 1")

    @property
    def whole(self) -> bool:
        return self.tile == 0

    def sizes(self, modality: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(tile, overlap) per axis for signals of ``modality``, or None for a whole-signal field."""
        if self.whole:
            return None
        default = TILES[modality]
        side = self.tile if self.tile is not None else default[-1]
        overlap = self.overlap if self.overlap is not None else max(1, side // 8)
        if overlap > side // 4:
            raise ConfigError("--overlap", f"must be at most a quarter of the tile ({side // 4} for --tile {side})")
        if modality == "audio":
            return (side,), (overlap,)
        if modality == "image":
            return (side, side), (overlap, overlap)
        frames = self.frames if self.frames is not None else default[0]
        return (frames, side, side), (frames // 4, overlap, overlap)

    def frame_chunks(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(tile, overlap) of a video of ``shape`` (T, H, W) cut along time only, for fields that decode
        whole frames: chunks of ``frames`` (default ``FRAME_CHUNK``) sharing a quarter of them, or None
        for a whole-signal field (``--tile 0``, or a video no longer than one chunk: the papers' clips)."""
        if self.whole:
            return None
        if self.tile is not None or self.overlap is not None:
            raise ConfigError("--tile", "a field that decodes whole frames (NeRV) is cut along time only: give "
                              "--tile-frames F (frames per chunk), or --tile 0 for one field over the whole video")
        frames = self.frames if self.frames is not None else FRAME_CHUNK
        if shape[0] <= frames:
            return None
        # a quarter, as video blocks: at twice the frame rate, clips sharing 2 of 16 frames jumped 3x more across
        # their border than elsewhere (tiling.seam_ratio), sharing 4 1.3x; at the native rate both are seamless
        return (frames, *shape[1:]), (frames // 4, 0, 0)


@dataclass
class AdaptConfig:
    """Fitting from a learned initialisation: GradNCP's test-time SGD (Algorithm 2), or Adam."""

    steps: int = 16  # K_test
    lr: float = 1e-2  # alpha, the meta-training inner step size
    gamma: float = 0.25  # fraction of points whose gradient sets the step size
    rescale: bool = True  # False: plain full-context SGD
    optimizer: str = "sgd"  # "adam": Adam from the initialisation instead
    adam_steps: int = 100  # Meta-SparseINR's evaluation protocol
    adam_lr: float = 1e-4
    batch_size: int = 16
    chunk: int = 1 << 18
    device: str = "auto"

    def __post_init__(self):
        if self.steps < 0 or self.adam_steps < 0:
            raise ConfigError("--steps", "must be >= 0")
        if not self.lr > 0 or not self.adam_lr > 0:
            raise ConfigError("--lr", "must be positive")
        if not 0 < self.gamma <= 1:
            raise ConfigError("--gamma", "must be in (0, 1]")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError("--optimizer", f"must be sgd or adam, not {self.optimizer!r}")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", "must be >= 1")


# Coded storage (nfit.coding; the bit width is chosen by nfit.rate). Measured on held-out photos,
# BENCHMARKS.md "Compact files".
# Latent-grid fields (nfit.fields.grid, fitted by nfit.latent): Adam at lr on MSE + lambda * bits per sample.
# First chosen on a held-out 768x512 photo in 300 steps at lambda 1e-2 (2e-2 needed 35% fewer bits than 1e-2
# for the same PSNR); re-measured with the fit as it now is (800 steps, leaky units, autoregressive model), 4e-2
# on four Kodak-like photos, two seeds: +0.70 dB over JPEG on the mean at 1 bpp, where at 2e-2 the latents did
# not grow fast enough to spend the budget (one photo ended at lambda's floor), and -0.08 (noise) at 0.3 bpp
# (BENCHMARKS.md, "Latent grids"; wayne alone, one draw, 0.26 / 0.93 latent bpp: 2e-2 27.72 / 32.37 dB,
# 3e-2 28.32 / 33.32, 4.5e-2 28.12 / 34.15, 6e-2 - / 34.13). At 0.3 bpp 3e-2 scored more (+2.09 / +2.03
# over JPEG, seeds 0 / 1, against +1.78 / +1.88 at 4e-2), so a rate goal takes a share of lr that rises with
# it, log-linear in the latents' bpp between "lr_rates" (share, bpp; the goals of --bpp 0.3 and 1 at 768x512)
# (nfit.latent.lr_share); a PSNR goal or none takes lr itself. The step size falls from lr to
# lr * decay along a cosine over the fit: with it, 800 steps (~95 s at 768x512 on 2 CPU cores, inside the 2
# minutes issue 18 allows) scored about 2 dB more than 400 at a constant lr, at equal rate, on a held-out
# photo (1.5 dB of it the steps, 0.6 the decay; BENCHMARKS.md, "Latent grids").
# "alpha": soft rounding's sharpness, rising over the fit; "hard": the last fifth rounds the latents (at
# lr * hard_lr). A rate goal starts from a lambda read off "lambda_rates" (lambda, latents' bpp), where
# steering ended on two held-out photos of Kodak's difficulty (wayne, snow; 800 steps, --bpp 0.3 and 1,
# geometric means; the last point wayne's at a fixed lambda) (nfit.latent.lambda_for). Re-measured after
# the latents' autoregressive model, (3.5e-4, 0.92), (2.5e-3, 0.25) gained 0.4 dB on the four photos it was
# read off and lost up to 0.8 dB, and 10-18 s, on two others whose lambdas run 10-100x higher: a start too
# low costs more than one too high (BENCHMARKS.md, "Latent grids"), so this stays. At "aim_at" of the
# fit lambda is re-aimed once from the rate then, which settles at about early_rate of it (nfit.latent._aim).
# Every "every" steps from "steer_from", lambda is steered toward the goal by (heading / goal) ** steer_rate,
# the heading the rate carried steer_ahead measurements on at its last rate of change, or by
# exp(steer_psnr * (PSNR - goal)), at most steer_most-fold at a time. With both, two held-out photos landed
# within 0.3% of goals 3x-10x away from their first lambda, at the PSNR of a fixed lambda's fit at that rate
# (BENCHMARKS.md, "Latent grids"). Under a budget the latents aim at budget_share of what the rest of the
# file leaves, and a file still over it drops latents (nfit.rate.store_latents).
# "arm_every": the latents' autoregressive model (nfit.arm) predicts, and learns, every 2nd step; the step
# between counts the rate under its last predictions (its inputs, rounded latents, change slowly). At
# 768x512 the model added 20-32 ms to a ~100 ms step every step, about half that every 2nd and none every
# 4th; every 4th cost ~0.3 dB on a held-out photo, every 2nd nothing measurable (BENCHMARKS.md, "Latent grids").
LATENT_FIT = {"steps": 800, "lr": 4e-2, "decay": 0.05, "lambda": 1e-3, "lambda_range": (1e-5, 0.1),
              "alpha": (1.0, 16.0), "hard": 0.2, "hard_lr": 0.2, "every": 10, "aim_at": 0.1, "early_rate": 0.7,
              "steer_from": 0.3, "steer_ahead": 8, "steer_rate": 1.0, "steer_psnr": 0.25, "steer_most": 1.3,
              "lambda_rates": ((1.4e-3, 0.89), (5e-3, 0.24), (1.4e-2, 0.12)), "budget_share": 0.97,
              "arm_every": 2, "lr_rates": ((0.75, 0.26), (1.0, 0.94))}
# A size budget (--bpp, --max-bytes) under this many bits per pixel (per sample for audio), on images and
# audio, with no field, initialisation or tiling given, fits a latent grid instead of tiles
# (nfit.api.latents_for_budget). Coded tiles hold about one parameter per sample: on three held-out 768x512
# photos they scored 14-30 dB at 3-7 bpp, and reached what a latent grid reaches in its 800 steps (32.0-36.1
# dB at 0.5-2 bpp, where it tops out at lambda's floor) only at 9.5-11 bpp; at 0.3 bpp tiles made 12 dB of
# a photo a latent grid made 28.4 dB of. On a speech and a music clip, at 3 bits per sample, tiles scored
# 22-24 dB, latent grids 43-46 (tiles need 13-28 bits per sample for 38-45 dB) (BENCHMARKS.md, "Compact files").
LATENT_BUDGET_BPP = 8.0
# Peak memory of a latent fit per sample and channel, for choosing how many files to fit at once and
# refusing one that cannot fit: measured 12 steps over the process's resident set before, on a CPU, 438
# at 768x512 and 238 at 1536x1024 (171 between the two: a fixed ~0.2 GB besides); MEMORY_FRACTION
# leaves room for that.
LATENT_FIT_BYTES = 300
# New fields' options beyond their dataclass defaults (which stay as the first files were written, so
# those still load as written). A latent grid's gain floor: its levels' gains (each level's integer step
# in the MLP's units) are 1, 1, 1/2, then 1/4 (nfit.fields.grid). At gain 1 everywhere the coarse levels,
# the few latents a smooth photo rests on, ended at -1, 0 or 1 after 400 steps. With finer steps there,
# 400 steps on held-out 768x512 photos (PSNR of the rounded latents, the coder's bits), against gain 1:
# anne_helene (smooth) at lambda 1e-3 33.41 dB at 0.41 bpp against about 31.1 at 0.59; bar55_2 at 1e-2
# 23.72 at 0.173 against 23.66 at 0.185; donna at 1e-2 24.32 at 0.433 against 24.44 at 0.446. A gain of
# 0.25 on every level instead: anne_helene 33.78 at 0.66, but bar55_2 23.57 at 0.248 and donna 24.17 at
# 0.519 (BENCHMARKS.md, "Latent grids").
# A latent grid's autoregressive model of its latents (nfit.arm), 8 hidden units: see BENCHMARKS.md, "Latent grids".
# Its MLP's hidden activation, a leaky ReLU of slope 0.01: a fit starts from zero latents, where each unit sees
# only its bias, and with a ReLU the units drawn with a negative one started dead (6-11 of 16 alive at the first
# layer) and a third of them ended active on no pixel. On four held-out 768x512 photos, two seeds each, the mean
# over JPEG rose from +1.41 to +1.60 dB at 0.3 bpp and +0.05 to +0.18 at 1 bpp, where one photo's result
# swung by 1.4 dB with the seed (BENCHMARKS.md, "Latent grids").
FIELD_DEFAULTS = {"grid": {"gain_floor": 0.25, "arm": 8, "slope": 0.01}}
# A latent grid's MLP and mixing are stored at the bits between these that cost least at the fit's
# lambda (nfit.rate.store_latents): 12 costs under 0.01 dB, 8 saved ~270 bytes a file for 0.01 dB.
LATENT_NET_BITS = 12
LATENT_NET_MIN_BITS = 6
CODING_BITS = (2, 16)  # the bit widths a file may use; rate control searches them
CODING_MARGIN_DB = 0.5  # with a target PSNR and no --bits, the fit aims this far above it: room for the rounding
CODING_LOSS_DB = 0.3  # without a target: the fewest bits within this of the float field's PSNR
# Quantisation-aware fine-tuning of a coded field: Adam steps on the rounded values (straight-through).
# At 6 bits on two 768x512 photos: +0.7-1.0 dB in 10 steps (5-7 s on 2 CPU cores), +1.4-1.5 in 20,
# +1.8-1.9 in 40; lr 6e-5 gained less, 1e-4 to 1e-3 less still. A PSNR goal tries one bit fewer
# when rounding alone misses it by at most reach_db.
CODING_FINETUNE = {"steps": 10, "lr": 3e-5, "reach_db": 1.0}


@dataclass
class StoreConfig:
    """How a fitted field is written: coded (``bits``, see :mod:`nfit.coding`) or as floats (``bits=0``)."""

    # None: the fewest bits that keep the target PSNR, else within CODING_LOSS_DB of the float field
    # (see nfit.rate); 2-16: that many; 0: floats of ``dtype``
    bits: int | None = None
    dtype: str = "float32"  # floats: float32, or float16 (half the bytes; values rounded, the summary is of them)
    standalone: bool = False  # sparse fields: embed the packed mask instead of naming the initialisation that holds it
    max_bytes: int | None = None  # the largest file: the most bits that fit
    bpp: float | None = None  # the same per sample (pixel): max_bytes = bpp * samples / 8

    def __post_init__(self):
        if self.dtype not in ("float32", "float16"):
            raise ConfigError("--dtype", f"must be float32 or float16, not {self.dtype!r}")
        if self.dtype == "float16" and self.bits is None:
            self.bits = 0  # asking for half floats is asking for floats
        lo, hi = CODING_BITS
        if self.bits is not None and self.bits != 0 and not lo <= self.bits <= hi:
            raise ConfigError("--bits", f"must be 0 (floats) or {lo} to {hi}, not {self.bits}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError("--max-bytes", "must be >= 1")
        if self.bpp is not None and not 0 < self.bpp < 1e6:
            raise ConfigError("--bpp", "must be positive")
        if self.bpp is not None and self.max_bytes is not None:
            raise ConfigError("--bpp", "give --bpp or --max-bytes, not both")
        if self.bits is not None and (self.bpp is not None or self.max_bytes is not None):
            budget = "--max-bytes" if self.max_bytes is not None else "--bpp"
            raise ConfigError(budget, "chooses the bit width itself: leave out --bits and --dtype")

    @property
    def coded(self) -> bool:
        return self.bits != 0

    @property
    def by_quality(self) -> bool:
        """Whether nfit picks the bit width for a PSNR (no --bits, no budget): the fit then aims higher."""
        return self.bits is None and self.max_bytes is None and self.bpp is None

    def budget(self, samples: int) -> int | None:
        """The most bytes a file of a signal of ``samples`` samples may take, or None."""
        return self.max_bytes if self.bpp is None else int(self.bpp * samples / 8)


@dataclass
class SignalOptions:
    """How a media file becomes a signal to fit; None keeps what the file has."""

    modality: str | None = None  # None: from the file's extension
    sample_rate: int | None = None  # audio: resample to this many Hz
    duration: float | None = None  # audio: crop or pad (with silence) to this many seconds
    frames: int | None = None  # video: keep this many frames (after --stride)
    stride: int = 1  # video: keep every stride-th frame
    res: int | None = None  # images: resized to this longest side; video: centre square crop, resized to res x res

    def __post_init__(self):
        if self.sample_rate is not None and self.sample_rate < 1:
            raise ConfigError("--sample-rate", "must be >= 1")
        if self.duration is not None and not 0 < self.duration < float("inf"):
            raise ConfigError("--duration", "must be positive")
        if self.frames is not None and self.frames < 1:
            raise ConfigError("--frames", "must be >= 1")
        if self.stride < 1:
            raise ConfigError("--stride", "must be >= 1")
        if self.res is not None and self.res < 1:
            raise ConfigError("--res", "must be >= 1")


@dataclass
class FieldOptions:
    """Which field to fit; None keeps the field's own default (see nfit.fields)."""

    name: str = "siren"
    width: int | None = None
    depth: int | None = None
    w0: float | None = None  # SIREN only
    extra: dict | None = None  # any other options of the field's config, e.g. NeRV's {"strides": [2, 2]}


@dataclass
class DataConfig:
    """Folder datasets for meta-learning and evaluation."""

    modality: str | None = None  # None: the one modality the folder's files have
    res: int | None = None  # image, video: shorter side resized to this, then a centre square; None: DEFAULT_RES
    # audio: resampled to this; None: DEFAULT_SAMPLE_RATE for whole clips, each file's own rate for tiles
    sample_rate: int | None = None
    duration: float = DEFAULT_DURATION  # audio: clips cropped (from the start) or padded to this
    frames: int = DEFAULT_FRAMES  # video: frames per clip, from the first
    stride: int = 1  # video: every stride-th frame
    channels: int | None = None  # None: guessed from the first files (grey images: 1; audio: its channels)
    val_fraction: float = 0.1
    val_limit: int = 64  # validation signals evaluated at each validation
    workers: int | None = None  # DataLoader decoding processes; None: min(4, CPU cores)
    strict: bool = False  # stop at the first unreadable file instead of warning
    # Tiles (a tile initialisation for nfit fit's tiled fields): each signal of a batch is one
    # random tile of a file at the file's own scale (audio at its own rate, video's first frames).
    tile: int | None = None  # None: whole signals conformed to the grid above
    tile_frames: int | None = None
    overlap: int | None = None

    def __post_init__(self):
        if self.res is not None and self.res < 1:
            raise ConfigError("--res", "must be >= 1")
        if self.channels is not None and not 1 <= self.channels <= 4:
            raise ConfigError("--channels", "must be 1 to 4")
        SignalOptions(self.modality, self.sample_rate, self.duration, self.frames, self.stride)  # same checks
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("--val-fraction", "must be in [0, 1)")
        if self.val_limit < 1:
            raise ConfigError("--val-limit", "must be >= 1")
        if self.workers is not None and self.workers < 0:
            raise ConfigError("--workers", "must be >= 0")
        TileConfig(self.tile, self.tile_frames, self.overlap)  # same checks


    def tiles(self) -> TileConfig | None:
        """The tiling of a tile run (``tile``), else None."""
        return None if not self.tile else TileConfig(self.tile, self.tile_frames, self.overlap)

    def tile_options(self, modality: str, frames: int) -> SignalOptions:
        """How files are read to cut tiles from: at their own size (audio at its own rate unless
        ``sample_rate`` is given: never up- or downsampled by default, as images are never resized;
        video's first frames, ``TILE_SOURCE_FRAMES`` tiles' worth)."""
        return SignalOptions(modality, sample_rate=self.sample_rate, frames=frames * TILE_SOURCE_FRAMES,
                             stride=self.stride)

    def signal_options(self, modality: str) -> SignalOptions:
        """The reading options that conform a file of ``modality`` to this dataset's grid."""
        return SignalOptions(modality, self.sample_rate or DEFAULT_SAMPLE_RATE, self.duration, self.frames, self.stride,
                             self.res or DEFAULT_RES.get(modality))

    def decoding_workers(self) -> int:
        return self.workers if self.workers is not None else min(4, os.cpu_count() or 1)


@dataclass
class AlgoOptions:
    """The hyperparameters of a meta-learning strategy that a user set; None keeps the strategy's
    reference default (nfit.meta: MamlConfig, GradNCPConfig, SparseConfig), and a sparse run takes
    the ones it is not given from the dense run it prunes. Options of another strategy than the
    one trained are an error."""

    inner_steps: int | None = None  # K
    inner_lr: float | None = None  # alpha
    first_order: bool | None = None
    gradient_checkpointing: bool | None = None
    gamma: float | None = None  # gradncp
    boot_steps: int | None = None  # gradncp
    boot_lr: float | None = None  # gradncp
    lam: float | None = None  # gradncp
    rounds: int | None = None  # sparse
    prune_fraction: float | None = None  # sparse
    steps_per_round: int | None = None  # sparse
    prune: str | None = None  # sparse
    inner: str | None = None  # sparse: maml or gradncp inside the rounds

    def given(self) -> dict:
        """The options set, by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class TrainConfig:
    """The outer loop of meta-learning (the reference: Adam 1e-5, clipping 1.0, batch 8)."""

    algo: str = "gradncp"
    steps: int = 10_000  # outer steps (the papers train 150k; most of the gain comes early)
    batch_size: int = 8  # global: split over torchrun processes
    # Signals per forward/backward within a process: the outer loss is a mean of
    # independent per-signal terms, so accumulating their gradients in micro-batches
    # gives the same step with the memory of the micro-batch. None: the largest that
    # fits the free memory (measured before the first step; nfit.memory), at most all.
    micro_batch: int | None = None
    lr: float = 1e-5
    clip: float = 1.0  # gradient-norm clipping of the outer step
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 1000
    # ... or this many minutes after the last checkpoint, whichever comes first: on a CPU a
    # step can take minutes, and 1000 of them would be a day of work a kill could lose.
    ckpt_minutes: float = 10.0
    test_steps: int = 16  # K_test of validation (and the default of fitting from the result)
    # A non-finite loss or gradient norm: "stop" the run (its last checkpoint stays the
    # result), or "skip" that step's update and count it. Days-long runs meet a rare
    # bad batch; a run that diverges should stop rather than write NaN weights.
    nan_policy: str = "stop"
    device: str = "auto"
    # torch.compile the whole outer step (loss and gradient, nfit.meta.compiled) instead
    # of the eager strategy: maml and gradncp, one process. Off by default: compiling
    # takes minutes at K=16 and the gain is unmeasured on GPU (see BENCHMARKS.md); on
    # CUDA it also allows TF32 matmuls (eager keeps full float32, the reference).
    compile: bool = False

    def __post_init__(self):
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError("--nan-policy", f"must be {' or '.join(NAN_POLICIES)}, not {self.nan_policy!r}")
        for name in ("steps", "batch_size", "log_every", "val_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ConfigError("--" + name.replace("_", "-"), "must be >= 1")
        if not 0 < self.ckpt_minutes < float("inf"):
            raise ConfigError("--ckpt-minutes", "must be positive")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError("--micro-batch", "must be >= 1")
        if not self.lr > 0:
            raise ConfigError("--lr", "must be positive")
        if not self.clip > 0:
            raise ConfigError("--clip", "must be positive")
        if self.test_steps < 0:
            raise ConfigError("--test-steps", "must be >= 0")


@dataclass
class RenderConfig:
    res: int | None = None  # longest side (images, video frames); None: native size
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None  # audio; None: the source's rate
    fps: float | None = None  # video; None: the source's frame rate
    bit_depth: int | None = None  # None: 16 for 16-bit sources written as PNG, else 8
    quality: int = 95  # JPEG, MP4, WebM
    device: str = "auto"

    def __post_init__(self):
        for name in ("res", "width", "height", "sample_rate", "fps"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise ConfigError("--" + name.replace("_", "-"), "must be positive")
        if self.res is not None and (self.width is not None or self.height is not None):
            raise ConfigError(None, "give --res or --width/--height, not both")
