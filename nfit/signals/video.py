"""Videos <-> values in [0, 1] of shape [T, H, W, 3].

Decoding and encoding go through PyAV (FFmpeg), which reads every common container
and codec. A video field is fitted to a clip of a few frames, often a handful out of
a long file (UCF-101 style: 16 frames at a stride), so :func:`read_video` stops
decoding as soon as it holds the frames asked for, converts only the frames it
keeps, and writes them into one array allocated up front: a long video never sits
in memory twice, nor whole when only a clip is wanted.

Limits, checked before decoding: one frame's declared size against
:data:`nfit.config.MAX_IMAGE_PIXELS` (the decoder allocates frames of that size),
and the values to be returned (frames x height x width x 3) against
:data:`nfit.config.MAX_VIDEO_VALUES`. The limit is on what is kept, not on the
file's length: taking 16 frames of a feature film is fine, while a small file
declaring a million frames is refused before anything is allocated.

Frame counts: MP4/MOV sample tables state the exact count, so fewer decodable frames
there means a truncated file, an error. Matroska/WebM declare none and AVI headers
count dropped (empty) frames, so for those the count is the video packets in the
file; a Matroska file cut short reads as the frames it still holds.

Rendered videos are written frame by frame (:func:`write_video` takes an iterable),
so their size is bounded by the encoder, not by holding every frame.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# av (FFmpeg) is imported where a video is read or written: ~0.1 s to import, which commands
# that touch no video would pay otherwise.
from nfit._version import SOFTWARE, SOFTWARE_NAME
from nfit.atomic import atomic_frames_dir
from nfit.config import MAX_IMAGE_PIXELS, MAX_VIDEO_VALUES
from nfit.errors import ConfigError, InputError, NfitError, OutputError
from nfit.signals.reading import check_file, decoding, short

READ_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".m4v")
OUTPUT_FORMATS = ("mp4", "webm", "frames")
FRAME_NAME = "frame_{:05d}.png"  # in a "frames" output folder

_ATTACHED_PIC = 0x400  # AV_DISPOSITION_ATTACHED_PIC: cover art, a "video" stream of one picture
# format -> (FFmpeg container, encoder, largest CRF of that encoder)
_ENCODERS = {"mp4": ("mp4", "libx264", 51), "webm": ("webm", "libvpx-vp9", 63)}

__all__ = [
    "FRAME_NAME", "OUTPUT_FORMATS", "READ_EXTENSIONS", "VideoInfo", "atomic_frames_dir",
    "output_format", "probe_video", "read_video", "write_video",
]


@dataclass(frozen=True)
class VideoInfo:
    """What a video's headers declare; nothing is decoded to learn it."""

    frames: int | None  # None where the container states no count (Matroska, WebM)
    fps: float
    width: int
    height: int


# ------------------------------------------------------------------------ reading


def _url(path: Path) -> str:
    # "file:" keeps FFmpeg from reading a name such as "clip:1.mp4" as a protocol
    return "file:" + os.path.abspath(path)


def _open(path: Path):
    import av

    return av.open(_url(path), metadata_errors="replace")  # odd tag bytes are no reason to refuse a video


def _video_stream(path: Path, container):
    streams = [s for s in container.streams.video if not int(s.disposition) & _ATTACHED_PIC]
    if not streams:
        kinds = sorted({s.type for s in container.streams} - {"video"})
        raise InputError(path, "has no video stream" + (f" (only {' and '.join(kinds)})" if kinds else ""))
    return streams[0]


def _info(path: Path, stream) -> VideoInfo:
    # average_rate is the mean over the stream (the nominal rate of constant-rate video);
    # variable-rate video is read as evenly spaced frames at that mean
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise InputError(path, "declares no frame rate")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(path, f"video declares {width}x{height} frames, over nfit's limit of "
                               f"{MAX_IMAGE_PIXELS:,} pixels (nfit.config.MAX_IMAGE_PIXELS)")
    return VideoInfo(stream.frames or None, float(rate), width, height)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (where declared), frame rate and size from the headers, without decoding."""
    path = Path(path)
    check_file(path)
    with decoding(path, "a video"), _open(path) as container:
        return _info(path, _video_stream(path, container))


def _exact_count(container) -> bool:
    return "mp4" in container.format.name  # "mov,mp4,m4a,3gp,3g2,mj2": one sample-table entry per frame


def _count_packets(path: Path, index: int) -> int:
    """Video packets in the file (one per frame), read without decoding them."""
    with _open(path) as container:
        return sum(1 for packet in container.demux(container.streams[index]) if packet.size)


def _check_values(path: Path, frames: int, height: int, width: int) -> None:
    if frames * height * width * 3 > MAX_VIDEO_VALUES:
        raise InputError(path, f"{frames} frames of {width}x{height} are {frames * height * width * 3:,} values, "
                               f"over nfit's limit of {MAX_VIDEO_VALUES:,} (nfit.config.MAX_VIDEO_VALUES)")


def _to_rgb(frame) -> tuple[np.ndarray, int]:
    """A decoded frame as uint8 or uint16 [H, W, 3] and its top value.

    Grey, alpha and YUV frames all convert to RGB (alpha dropped); PyAV converts with
    the colour matrix and range the stream is tagged with. Sources deeper than 8 bits
    keep them (16-bit RGB) instead of being truncated.
    """
    deep = max(c.bits for c in frame.format.components) > 8
    return frame.to_ndarray(format="rgb48le" if deep else "rgb24"), 65535 if deep else 255


def _crop_resize(rgb: np.ndarray, top: int, res: int) -> np.ndarray:
    """[H, W, 3] integers -> float32 [res, res, 3]: centre square, then antialiased bicubic.

    As nfit's image datasets (signals.image.resize_crop) and GradNCP's UCF-101 preprocessing.
    """

    h, w = rgb.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(rgb[y : y + side, x : x + side]).astype(np.float32))
    square = square.div_(top).permute(2, 0, 1).unsqueeze(0)  # [1, 3, side, side]
    if side != res:
        square = F.interpolate(square, size=(res, res), mode="bicubic", antialias=True, align_corners=False)
    return square.clamp_(0.0, 1.0)[0].permute(1, 2, 0).numpy()  # bicubic overshoots at edges


def _shortfall(path: Path, have: int, frames: int, stride: int, start: int, declared: int | None) -> InputError:
    need = start + (frames - 1) * stride + 1
    how = f"{frames} frames" + (f" at stride {stride}" if stride > 1 else "") + (f" from frame {start}" if start else "")
    cut = f" (it declares {declared}: truncated or corrupt)" if declared else ""
    return InputError(path, f"has {have} frames{cut}; {how} need {need}")


def read_video(
    path: str | Path, frames: int | None = None, stride: int = 1, res: int | None = None, start: int = 0
) -> tuple[np.ndarray, float]:
    """Decode frames ``start, start + stride, ...`` (``frames`` of them; None: to the end).

    Returns values float32 [T, H, W, 3] in [0, 1] ([T, res, res, 3] with ``res``: centre
    square resized) and the frame rate of the result (the native rate / ``stride``).
    Every failure is an :class:`InputError` naming the file.
    """
    if frames is not None and frames < 1:
        raise ConfigError("frames", f"must be >= 1, got {frames}")
    if stride < 1:
        raise ConfigError("stride", f"must be >= 1, got {stride}")
    if start < 0:
        raise ConfigError("start", f"must be >= 0, got {start}")
    if res is not None and res < 1:
        raise ConfigError("--res", f"must be >= 1, got {res}")
    path = Path(path)
    check_file(path)
    with decoding(path, "a video"), _open(path) as container:
        stream = _video_stream(path, container)
        info = _info(path, stream)
        exact = info.frames is not None and _exact_count(container)
        if frames is not None:
            keep = frames
        else:
            total = info.frames if exact else _count_packets(path, stream.index)
            keep = max(0, -(-(total - start) // stride))
            if keep == 0:
                raise InputError(path, f"has {total} frames, none from frame {start}" if total else "holds no frames")
        _check_values(path, keep, *((res, res) if res else (info.height, info.width)))

        stream.thread_type = "AUTO"  # frame and slice threads
        out: np.ndarray | None = None
        decoded = kept = 0
        for frame in container.decode(stream):
            index, decoded = decoded, decoded + 1
            if index < start or (index - start) % stride:
                continue  # decoded (later frames depend on it) but never converted
            rgb, top = _to_rgb(frame)
            if out is None:  # the decoded size, which a container may declare wrongly
                shape = (res, res) if res else rgb.shape[:2]
                _check_values(path, keep, *shape)
                out = np.empty((keep, *shape, 3), np.float32)
            if res:
                out[kept] = _crop_resize(rgb, top, res)
            elif rgb.shape[:2] != out.shape[1:3]:
                raise InputError(path, f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, not "
                                       f"{out.shape[2]}x{out.shape[1]} as before (size changes mid-video)")
            else:
                np.divide(rgb, top, out=out[kept], dtype=np.float32)
            kept += 1
            if kept == keep:
                break  # enough: the rest of the file is never decoded

    truncated = exact and decoded < info.frames
    if frames is not None and kept < frames:
        raise _shortfall(path, decoded, frames, stride, start, info.frames if truncated else None)
    if truncated and kept < keep:
        raise InputError(path, f"truncated or corrupt: decoded {decoded} of the {info.frames} frames it declares")
    if out is None or kept == 0:
        raise InputError(path, "no frames could be decoded")
    return out[:kept], info.fps / stride


# ------------------------------------------------------------------------ writing


def output_format(path: str | Path) -> str:
    """'mp4', 'webm', or 'frames' (a folder of PNGs: a path without suffix or ending in '/')."""
    text = str(path)
    ext = Path(text).suffix.lower()
    if text.endswith(("/", os.sep)) or not ext or Path(text).is_dir():
        return "frames"
    if ext in (".mp4", ".webm"):
        return ext[1:]
    raise ConfigError(path, f"cannot write a video as {ext} (use .mp4 (H.264), .webm (VP9), "
                            "or a folder for PNG frames: a path ending in /)")


def _fraction(fps: float) -> Fraction:
    # float rates such as 30000/1001 / stride come back exactly from a bounded denominator
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ConfigError("--fps", f"must be a positive number, got {fps!r}")
    return fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(100_000)


def _as_rgb(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (1, 3):
        raise ValueError(f"frames must be uint8 [H, W, 3] or [H, W, 1], got {frame.dtype} {list(frame.shape)}")
    if size is not None and frame.shape[:2] != tuple(size):
        raise ValueError(f"frame is {list(frame.shape[:2])}, expected [H, W] = {list(size)}")
    return np.ascontiguousarray(np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Encoder and file-system failures as one OutputError naming the output."""
    try:
        yield
    except NfitError:
        raise
    except OSError as err:  # PyAV's FFmpeg errors are OSErrors too
        raise OutputError(path, f"cannot write ({type(err).__name__}: {short(err)})") from None
    except MemoryError:
        raise OutputError(path, "not enough memory to encode this video") from None
    except Exception as err:  # noqa: BLE001
        raise OutputError(path, f"cannot encode ({type(err).__name__}: {short(err)})") from None


class _Encoder:
    """One H.264 or VP9 stream; opened at the first frame, whose size it takes."""

    def __init__(self, path: Path, fmt: str, rate: Fraction, quality: int):
        self.path, self.fmt, self.rate, self.quality = path, fmt, rate, quality
        self.container = self.stream = None
        self.count = 0

    def _open(self, height: int, width: int) -> None:
        import av

        container_format, codec, worst = _ENCODERS[self.fmt]
        # fmt named explicitly: atomic_output's temporary name need not end in .mp4/.webm;
        # faststart puts the index first so players can start before the whole file arrives
        options = {"movflags": "+faststart"} if self.fmt == "mp4" else {}
        self.container = av.open(_url(self.path), "w", format=container_format, container_options=options)
        self.container.metadata["comment"] = SOFTWARE  # the mark a later render looks for before replacing this file
        stream = self.container.add_stream(codec, rate=self.rate)
        stream.width, stream.height = width, height
        # 4:2:0 (chroma at half resolution) is what every player decodes. libx264 refuses it
        # for odd sizes, so those get 4:4:4 (High 4:4:4 profile: fine for FFmpeg-based
        # players, not for browsers or QuickTime); VP9 rounds its chroma planes up and
        # takes odd sizes in 4:2:0
        even = width % 2 == 0 and height % 2 == 0
        stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        crf = round(worst * (1 - self.quality / 100))  # 95 -> 3 of 51 (x264) / 3 of 63 (VP9): near lossless
        cc = stream.codec_context
        cc.bit_rate = 0  # constant quality: with a bit rate set, VP9 would aim at it instead
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # BT.709, tagged so players decode what we encode
        cc.color_range = 1  # limited ("MPEG"), what players assume
        if codec == "libx264":
            cc.options = {"crf": str(crf), "preset": "medium"}
        else:  # VP9's constant-quality mode needs b=0; cpu-used 4 and row threads: fast, little loss
            cc.options = {"crf": str(crf), "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
        self.stream = stream

    def write(self, rgb: np.ndarray) -> None:
        import av

        if self.container is None:
            self._open(*rgb.shape[:2])
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format=self.stream.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG")
        frame.pts = self.count  # in 1 / rate, the codec's time base
        self.count += 1
        self.container.mux(self.stream.encode(frame))

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the encoder's look-ahead
        self.container.close()
        self.container = None

    def abort(self) -> None:
        if self.container is not None:
            with suppress(Exception):  # already failing; the caller removes the partial file
                self.container.close()
            self.container = None


class _PngFolder:
    """frame_00000.png, frame_00001.png, ... in ``path`` (created), lossless 8-bit RGB."""

    def __init__(self, path: Path):
        self.path, self.count = path, 0

    def write(self, rgb: np.ndarray) -> None:
        from PIL import Image

        if self.count == 0:
            self.path.mkdir(exist_ok=True)
        Image.fromarray(rgb).save(self.path / FRAME_NAME.format(self.count), format="PNG")
        self.count += 1

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass  # the frames folder is the caller's: atomic_frames_dir removes it


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fmt: str,
    fps: float,
    *,
    quality: int = 95,
    size: tuple[int, int] | None = None,
) -> None:
    """Encode frames uint8 [H, W, 3] (or grey [H, W, 1]) as ``fmt`` (see :func:`output_format`).

    Streaming: each frame is taken from ``frames``, encoded and dropped before the next
    is asked for. ``size`` (height, width) checks every frame; None: the first frame's.
    ``quality`` 1-100 sets the codec's constant-quality factor (CRF). Wrap the path in
    :func:`nfit.atomic.atomic_output` (files) or :func:`atomic_frames_dir` (frames) for
    all-or-nothing output. Write failures are :class:`OutputError`; errors raised by
    ``frames`` itself pass through unchanged.
    """
    path = Path(path)
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(path, f"unknown video format {fmt!r} (known: {', '.join(OUTPUT_FORMATS)})")
    if not 1 <= quality <= 100:
        raise ConfigError("--quality", f"must be in 1..100, got {quality}")
    sink = _PngFolder(path) if fmt == "frames" else _Encoder(path, fmt, _fraction(fps), quality)
    done = False
    try:
        for frame in frames:
            rgb = _as_rgb(frame, size)
            size = rgb.shape[:2]  # every later frame must match the first
            with _writing(path):
                sink.write(rgb)
            del frame, rgb  # hold no frame while the next one is made
        if sink.count == 0:
            raise OutputError(path, "no frames to write")
        with _writing(path):
            sink.finish()
        done = True
    finally:
        if not done:
            sink.abort()




def written_by_nfit(path: Path) -> bool:
    """Whether a video file carries the mark nfit's renders get (the container's comment)."""
    import av

    try:
        with av.open(_url(path), metadata_errors="replace") as container:
            return str(container.metadata.get("comment", "")).startswith(SOFTWARE_NAME)
    except Exception:  # noqa: BLE001  unreadable: not a render of ours
        return False
