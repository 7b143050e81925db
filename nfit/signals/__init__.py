"""Media files <-> signals: values in [0, 1] on a regular grid, one module per modality.

A modality knows which files it reads, how to decode them into a :class:`Signal`,
how to conform a file to a dataset's fixed grid, and how to write rendered values
back. Modalities register in :data:`MODALITIES`; everything downstream (fitting,
meta-learning, rendering, .nf files) only sees grid shapes, channels and a rate.

    modality   grid (array order)   rate
    image      (H, W)               -
    audio      (T,)                 samples per second
    video      (T, H, W)            frames per second
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nfit.config import DEFAULT_SAMPLE_RATE, RenderConfig, SignalOptions
from nfit.errors import ConfigError, InputError
from nfit.signals import audio, image, video
from nfit.signals.grid import CONVENTION, fit_shape, grid_coords
from nfit.signals.reading import check_file


@dataclass
class Signal:
    """One decoded file: ``values`` float32 ``[*shape, C]`` in [0, 1]."""

    modality: str
    values: np.ndarray
    bit_depth: int
    source: Path
    rate: float | None = None  # along the first axis: audio samples or video frames per second

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[:-1])

    @property
    def channels(self) -> int:
        return self.values.shape[-1]


def _spatial_shape(native: tuple[int, int], cfg: RenderConfig) -> tuple[int, int]:
    """A frame's render size: native, longest side ``res``, or explicit width and/or height."""
    width, height = cfg.width, cfg.height
    if width is not None or height is not None:
        h, w = native
        if width is None:
            return (height, round(w * height / h))
        if height is None:
            return (round(h * width / w), width)
        return (height, width)
    return native if cfg.res is None else fit_shape(native, cfg.res)


class ImageModality:
    name: ClassVar[str] = "image"
    axes: ClassVar[tuple[str, ...]] = ("y", "x")
    extensions: ClassVar[tuple[str, ...]] = image.READ_EXTENSIONS
    streams: ClassVar[bool] = False  # written from one array, not frame by frame
    default_suffix: ClassVar[str] = ".png"  # what `nfit render` writes without -o

    @staticmethod
    def read(path: Path, opts: SignalOptions) -> Signal:
        """The whole image; with ``opts.res`` resized to that longest side, aspect kept."""
        values, bits = image.read_image(path)
        if opts.res is not None:
            values = image.resize(values, fit_shape(values.shape[:2], opts.res))
        return Signal("image", values, bits, path)

    @staticmethod
    def upscale(path: Path, opts: SignalOptions) -> tuple[float, str] | None:
        """How much conforming ``path`` to a dataset grid enlarges it, and the option that would not."""
        size = image.header_size(path)
        return None if size is None else (opts.res / min(size), f"--res {min(size)}")

    @staticmethod
    def dataset_shape(opts: SignalOptions) -> tuple[int, ...]:
        return (opts.res, opts.res)

    @staticmethod
    def grid_options(shape: tuple[int, ...], rate: float | None) -> SignalOptions:
        """The options that conform files to a dataset grid (the inverse of ``dataset_shape``)."""
        return SignalOptions("image", res=shape[0])

    @staticmethod
    def load(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        return image.load_image(path, opts.res, channels)

    @staticmethod
    def load_whole(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        return image.load_native(path, channels)

    @staticmethod
    def guess_channels(path: Path) -> int:
        return 1 if image.decode_image(path).shape[-1] <= 2 else 3

    @staticmethod
    def field_defaults(field: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {}

    @staticmethod
    def output_format(path: Path) -> str:
        return image.output_format(path)

    @staticmethod
    def target_shape(native: tuple[int, ...], rate: float | None, cfg: RenderConfig) -> tuple[tuple[int, ...], None]:
        return _spatial_shape(native, cfg), None

    @staticmethod
    def write(path: Path, samples: np.ndarray, fmt: str, rate: float | None, *, quality: int = 95) -> None:
        image.write_image(path, samples, fmt, quality=quality)

    written_by_nfit = staticmethod(image.written_by_nfit)  # a render of ours, which a new render may replace

    @staticmethod
    def picture(values: np.ndarray) -> np.ndarray:
        """One picture [H, W, C] of a signal [*shape, C], for previews."""
        return values


class AudioModality:
    name: ClassVar[str] = "audio"
    axes: ClassVar[tuple[str, ...]] = ("t",)
    extensions: ClassVar[tuple[str, ...]] = audio.READ_EXTENSIONS
    streams: ClassVar[bool] = False
    default_suffix: ClassVar[str] = ".wav"  # what `nfit render` writes without -o
    # GradNCP's audio field: SIREN with time scaled by 50 (a second holds thousands of periods)
    COORD_SCALE: ClassVar[float] = 50.0

    @staticmethod
    def read(path: Path, opts: SignalOptions) -> Signal:
        values, bits, rate = audio.read_audio(path)
        if opts.sample_rate is not None and opts.sample_rate != rate:
            values, rate = audio.resample(values, rate, opts.sample_rate), opts.sample_rate
        if opts.duration is not None:
            values = audio.fit_length(values, round(opts.duration * rate))
        return Signal("audio", values, bits, path, float(rate))

    @staticmethod
    def upscale(path: Path, opts: SignalOptions) -> tuple[float, str] | None:
        rate = audio.header_rate(path)
        return None if rate is None else (opts.sample_rate / rate, f"--sample-rate {rate}")

    @staticmethod
    def dataset_shape(opts: SignalOptions) -> tuple[int, ...]:
        return (round(opts.duration * opts.sample_rate),)

    @staticmethod
    def grid_options(shape: tuple[int, ...], rate: float | None) -> SignalOptions:
        rate = round(rate or DEFAULT_SAMPLE_RATE)
        return SignalOptions("audio", sample_rate=rate, duration=shape[0] / rate)

    @staticmethod
    def load(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        return audio.load_clip(path, opts.sample_rate, opts.duration, channels)

    @staticmethod
    def load_whole(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        return audio.load_clip(path, opts.sample_rate, None, channels)

    @staticmethod
    def guess_channels(path: Path) -> int:
        return min(2, audio.read_audio(path)[0].shape[-1])

    @classmethod
    def field_defaults(cls, field: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"coord_scale": cls.COORD_SCALE, "arm": 0}  # a latent grid of one row: no autoregressive model

    @staticmethod
    def output_format(path: Path) -> str:
        return audio.output_format(path)

    @staticmethod
    def target_shape(native: tuple[int, ...], rate: float | None, cfg: RenderConfig) -> tuple[tuple[int, ...], float]:
        """The same duration at ``cfg.sample_rate``: the field is continuous in time."""
        if cfg.sample_rate is None or rate is None:
            return native, rate
        return (max(1, round(native[0] * cfg.sample_rate / rate)),), float(cfg.sample_rate)

    @staticmethod
    def write(path: Path, samples: np.ndarray, fmt: str, rate: float | None, *, quality: int = 95) -> None:
        bits = 16 if samples.dtype == np.uint16 else 8
        audio.write_audio(path, samples, fmt, round(_rate(path, rate)), bit_depth=bits)

    written_by_nfit = staticmethod(audio.written_by_nfit)

    @staticmethod
    def picture(values: np.ndarray) -> None:
        return None


class VideoModality:
    name: ClassVar[str] = "video"
    axes: ClassVar[tuple[str, ...]] = ("t", "y", "x")
    extensions: ClassVar[tuple[str, ...]] = video.READ_EXTENSIONS
    streams: ClassVar[bool] = True  # rendered and written frame by frame: memory is one frame
    default_suffix: ClassVar[str] = ".mp4"  # what `nfit render` writes without -o

    @staticmethod
    def read(path: Path, opts: SignalOptions) -> Signal:
        values, fps = video.read_video(path, frames=opts.frames, stride=opts.stride, res=opts.res)
        return Signal("video", values, 8, path, float(fps))

    @staticmethod
    def upscale(path: Path, opts: SignalOptions) -> tuple[float, str] | None:
        try:
            info = video.probe_video(path)
        except InputError:
            return None  # reported when the clip is loaded
        side = min(info.height, info.width)
        return opts.res / side, f"--res {side}"

    @staticmethod
    def dataset_shape(opts: SignalOptions) -> tuple[int, ...]:
        return (opts.frames, opts.res, opts.res)

    @staticmethod
    def grid_options(shape: tuple[int, ...], rate: float | None) -> SignalOptions:
        return SignalOptions("video", frames=shape[0], res=shape[1])

    @staticmethod
    def load(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        values, _ = video.read_video(path, frames=opts.frames, stride=opts.stride, res=opts.res)
        return image.convert_channels(torch.from_numpy(values), channels).contiguous()

    @staticmethod
    def load_whole(path: Path, opts: SignalOptions, channels: int) -> torch.Tensor:
        values, _ = video.read_video(path, frames=opts.frames, stride=opts.stride)  # frames at their own size
        return image.convert_channels(torch.from_numpy(values), channels).contiguous()

    @staticmethod
    def guess_channels(path: Path) -> int:
        return 3

    @staticmethod
    def field_defaults(field: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"frame_height": shape[1], "frame_width": shape[2]}  # NeRV decodes whole frames of this size

    @staticmethod
    def output_format(path: Path) -> str:
        return video.output_format(path)

    @staticmethod
    def target_shape(native: tuple[int, ...], rate: float | None, cfg: RenderConfig) -> tuple[tuple[int, ...], float | None]:
        """Frames at ``cfg.fps`` over the same duration, each frame sized as an image would be."""
        frames = native[0]
        if cfg.fps is not None and rate is not None:
            frames, rate = max(1, round(native[0] * cfg.fps / rate)), float(cfg.fps)
        return (frames, *_spatial_shape(native[1:], cfg)), rate

    @staticmethod
    def write(path: Path, frames: Iterable[np.ndarray], fmt: str, rate: float | None, *, quality: int = 95) -> None:
        video.write_video(path, frames, fmt, _rate(path, rate), quality=quality)

    written_by_nfit = staticmethod(video.written_by_nfit)

    @staticmethod
    def picture(values: np.ndarray) -> np.ndarray:
        return values[len(values) // 2]  # the middle frame


def _rate(path: Path, rate: float | None) -> float:
    if rate is None:  # .nf files of audio and video always record theirs
        raise ConfigError(path, "no sample or frame rate to write with")
    return rate


MODALITIES: dict[str, type] = {m.name: m for m in (ImageModality, AudioModality, VideoModality)}
EXTENSIONS: tuple[str, ...] = tuple(e for m in MODALITIES.values() for e in m.extensions)  # every file nfit reads


def modality_for(path: Path, override: str | None = None):
    if override is not None:
        if override not in MODALITIES:
            raise ConfigError("--modality", f"unknown modality {override!r} (known: {', '.join(MODALITIES)})")
        return MODALITIES[override]
    ext = path.suffix.lower()
    for modality in MODALITIES.values():
        if ext in modality.extensions:
            return modality
    raise InputError(path, f"unsupported file type {ext or '(no extension)'} (nfit reads {', '.join(EXTENSIONS)})")


def read_signal(path: str | Path, options: SignalOptions | str | None = None) -> Signal:
    """Decode a media file, with one-line errors for the common ways it can fail.

    ``options`` (or just a modality name) may resample audio, cut video, or force the modality.
    """
    path = Path(path)
    opts = SignalOptions(options) if isinstance(options, str) or options is None else options
    check_file(path)
    try:
        return modality_for(path, opts.modality).read(path, opts)
    except PermissionError:
        raise InputError(path, "permission denied") from None


def frames_of(chunks: Iterator[tuple[int, int, np.ndarray]], shape: tuple[int, ...], channels: int) -> Iterator[np.ndarray]:
    """Regroup flat chunks ``(start, stop, samples [stop - start, C])`` of a grid into its
    slices along the first axis, ``[*shape[1:], C]`` each, yielded as soon as they are whole."""
    per = math.prod(shape[1:])
    buf: np.ndarray | None = None
    for start, stop, samples in chunks:
        pos = start
        while pos < stop:
            frame, offset = divmod(pos, per)
            if offset == 0:
                buf = np.empty((per, channels), dtype=samples.dtype)
            take = min(stop - pos, per - offset)
            buf[offset : offset + take] = samples[pos - start : pos - start + take]
            pos += take
            if offset + take == per:
                yield buf.reshape(*shape[1:], channels)


__all__ = ["CONVENTION", "EXTENSIONS", "MODALITIES", "Signal", "fit_shape", "frames_of", "grid_coords",
           "modality_for", "read_signal"]
