"""A corpus of bad (and merely unusual) input files, generated at test time.

Every builder writes one file into a folder and returns its path; the tests in
test_reliability.py run each through the CLI and the Python API, and the fuzz tests
start from the good ones.
"""

from __future__ import annotations

import io
import json
import struct
import wave
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from nfit.fieldfile import (FORMAT_VERSION, META_KEY, PACKED_KEY, MetaInit, NeuralField, pack_metadata, read_metadata,
                            save_field, save_init)
from nfit.fields import build_field
from nfit.signals import CONVENTION

DATA = Path(__file__).parent / "data"
PHOTO = DATA / "chelsea_48x32.png"
JPEG = DATA / "rocket_48x32.jpg"
FLAC = DATA / "audio" / "swash_stereo_24bit.flac"
MP4 = DATA / "video" / "carphone_88x72.mp4"
CFG = {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3}


def pixels() -> np.ndarray:
    return iio.imread(PHOTO)[..., :3]  # [32, 48, 3] uint8


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG frame whose IHDR declares width x height; the data is a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def jpeg_bomb() -> bytes:
    """The test JPEG with its frame header (SOF) claiming 60000x60000."""
    data = bytearray(JPEG.read_bytes())
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    return bytes(data)


def gif_bomb() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels()).save(buf, "GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", 65_535, 65_535)  # logical screen size
    return bytes(data)


def tiff_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A minimal uncompressed grey TIFF whose tags declare width x height."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, (width * height) & 0xFFFFFFFF)]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        out += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return out + struct.pack("<I", 0) + b"\0" * 64


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _corrupt(data: bytes, start: int, length: int) -> bytes:
    out = bytearray(data)
    out[start : start + length] = bytes((7 * i + 3) % 256 for i in range(length))
    return bytes(out)


def empty_wav() -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"")
    return buf.getvalue()


def float_tiff_with_nan() -> bytes:
    values = np.full((4, 4), 0.5, np.float32)
    values[1, 2] = np.nan
    buf = io.BytesIO()
    iio.imwrite(buf, values, extension=".tif")
    return buf.getvalue()


BAD_MEDIA: dict[str, tuple] = {
    # name: (file name, bytes builder, what the one-line error says)
    "truncated png": ("truncated.png", lambda: PHOTO.read_bytes()[:200], "cannot decode"),
    "corrupt png": ("corrupt.png", lambda: _corrupt(PHOTO.read_bytes(), 40, 400), "cannot decode"),
    "truncated jpeg": ("truncated.jpg", lambda: JPEG.read_bytes()[: len(JPEG.read_bytes()) // 2], "cannot decode"),
    "corrupt jpeg": ("corrupt.jpg", lambda: _corrupt(JPEG.read_bytes(), 300, 400), "cannot decode"),
    "zero bytes": ("zero.png", lambda: b"", "file is empty"),
    "text named .png": ("text.png", lambda: b"hello, I am a text file\n" * 4, "cannot decode"),
    "png bomb": ("bomb.png", png_bomb, "100000x100000 pixels, over nfit's limit"),
    "jpeg bomb": ("bomb.jpg", jpeg_bomb, "over nfit's limit"),
    "gif bomb": ("bomb.gif", gif_bomb, "over nfit's limit"),
    "tiff bomb": ("bomb.tif", tiff_bomb, "over nfit's limit"),
    "NaN in a float tiff": ("nan.tif", float_tiff_with_nan, "NaN"),
    "audio with no samples": ("silence.wav", empty_wav, "no audio samples"),
    "text named .wav": ("text.wav", lambda: b"hello, I am a text file\n" * 4, "cannot decode as audio"),
    "truncated flac": ("truncated.flac", lambda: FLAC.read_bytes()[:100], "cannot decode as audio"),
    "zero-byte mp3": ("zero.mp3", lambda: b"", "file is empty"),
    "video with no decodable frame": ("broken.mp4", lambda: b"\0\0\0\x18ftypmp42" + b"\0" * 64, "cannot decode as a video"),
    "text named .mov": ("text.mov", lambda: b"hello, I am a text file\n" * 4, "cannot decode as a video"),
    "truncated mp4": ("truncated.mp4", lambda: MP4.read_bytes()[:2000], "video"),
}

UNUSUAL_MEDIA: dict[str, tuple] = {
    # name: (file name, bytes builder, (height, width, channels, bit depth) as read)
    "1x1 image": ("one.png", lambda: encode(Image.fromarray(pixels()[:1, :1]), "PNG"), (1, 1, 3, 8)),
    "16-bit png": ("deep.png", lambda: encode(Image.fromarray((pixels()[..., 0].astype(np.uint16) * 257)), "PNG"),
                   (32, 48, 1, 16)),
    "cmyk jpeg": ("cmyk.jpg", lambda: encode(Image.fromarray(pixels()).convert("CMYK"), "JPEG", quality=95), (32, 48, 3, 8)),
    "palette png": ("palette.png", lambda: encode(Image.fromarray(pixels()).convert("P"), "PNG"), (32, 48, 3, 8)),
    "animated gif": ("anim.gif", lambda: encode(Image.fromarray(pixels()), "GIF", save_all=True,
                                                append_images=[Image.fromarray(255 - pixels())]), (32, 48, 3, 8)),
}


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ .nf and init files


def field_file(path: Path) -> Path:
    params = build_field("siren", CFG).init_params(torch.Generator().manual_seed(0))
    return save_field(NeuralField("siren", dict(CFG), params, "image", (6, 5), 3, source="x.png"), path)


def init_file(path: Path) -> Path:
    params = build_field("siren", CFG).init_params(torch.Generator().manual_seed(0))
    init = MetaInit("siren", dict(CFG), params, "image", (12, 10), 3, algo={"name": "gradncp", "config": {}},
                    test={"steps": 1, "lr": 0.01, "gamma": 0.25}, coords=dict(CONVENTION))
    save_init(init, path)
    return path


def rewrite(src: Path, dst: Path, edit_meta=None, edit_tensors=None, raw_meta: str | None = None) -> Path:
    """A copy of ``src`` with its metadata or tensors edited (a well-formed safetensors file)."""
    meta = json.loads(read_metadata(src))  # plain or packed (format 8)
    tensors = load_file(str(src))
    if edit_meta:
        edit_meta(meta)
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst), metadata={META_KEY: raw_meta if raw_meta is not None else json.dumps(meta)})
    return dst


def repack(src: Path, dst: Path, packed: str) -> Path:
    """A copy of ``src`` whose metadata is the packed (format 8) entry ``packed``."""
    save_file(load_file(str(src)), str(dst), metadata={PACKED_KEY: packed})
    return dst


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    return dst


def _huge_header(src: Path, dst: Path) -> Path:
    dst.write_bytes((10**12).to_bytes(8, "little") + src.read_bytes()[8:])
    return dst


BAD_FIELD_FILES: dict[str, tuple] = {
    # name: (make(good, dst) -> dst, what the error says); the same edits apply to .nf and init files
    "truncated": (_truncate, "safetensors"),
    "absurd header size": (_huge_header, "not a safetensors file"),
    "wrong tensor shape": (lambda g, d: rewrite(g, d, edit_tensors=lambda t: t.update({"l1.weight": torch.zeros(8, 7)})),
                           "has shape"),
    "metadata not JSON": (lambda g, d: rewrite(g, d, raw_meta="{format: nfit"), "not valid JSON"),
    "metadata nested too deep": (lambda g, d: rewrite(g, d, raw_meta="[" * 100_000 + "]" * 100_000), "not valid JSON"),
    "metadata too large": (lambda g, d: rewrite(g, d, edit_meta=lambda m: m.update(pad="x" * (1 << 20))),
                           "over nfit's limit"),
    "packed metadata not base85": (lambda g, d: repack(g, d, ",,,,"), "packed metadata is corrupt"),
    "packed metadata truncated": (lambda g, d: repack(g, d, pack_metadata(read_metadata(g))[:-5]),
                                  "packed metadata is corrupt"),
    "packed metadata inflates hugely": (lambda g, d: repack(g, d, pack_metadata(" " * (4 << 20))), "over nfit's limit"),
    "unknown format version": (  # the next one, not yet written
        lambda g, d: rewrite(g, d, edit_meta=lambda m: m.update(format_version=FORMAT_VERSION + 1)),
        f"format version {FORMAT_VERSION + 1}"),
    "absurd signal size": (lambda g, d: rewrite(g, d, edit_meta=lambda m: m["signal"].update(shape=[10**9, 10**9])),
                           "not a valid image grid"),
    "absurd field depth": (lambda g, d: rewrite(g, d, edit_meta=lambda m: m["field"]["config"].update(depth=10**9)),
                           "out of range"),
}
