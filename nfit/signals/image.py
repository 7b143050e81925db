"""Images <-> values in [0, 1] of shape [H, W, C].

Reading goes through imageio (PNG, JPEG, BMP, TIFF, WebP, GIF's first frame).
Pillow, behind imageio, truncates 16-bit colour PNGs to 8 bits, so 16-bit PNGs
are read and written with pypng instead, bit-exactly. CMYK (print JPEGs) is
converted to RGB: imageio would hand its four ink planes over as if they were RGBA.

Before any decoding, the size the header declares is checked against
:data:`nfit.config.MAX_IMAGE_PIXELS`, so a small file claiming 100000x100000
pixels (a decompression bomb) is refused without allocating anything.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nfit._version import SOFTWARE, SOFTWARE_NAME
from nfit.config import MAX_IMAGE_PIXELS
from nfit.errors import ConfigError, InputError, OutputError
from nfit.signals.reading import decoding, short

# Codecs (imageio, pypng, tifffile) are imported where a file of theirs is read or written:
# together they take ~0.2 s to import, which every command would pay otherwise.

READ_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_PIXELS = MAX_IMAGE_PIXELS  # the old name
_NOT_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # Pillow modes whose planes are not R, G, B


def _too_big(path: Path, size: str) -> InputError:
    return InputError(path, f"image declares {size} pixels, over nfit's limit of {MAX_IMAGE_PIXELS:,} "
                            "(nfit.config.MAX_IMAGE_PIXELS): refusing a possible decompression bomb")


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_big(path, f"{width}x{height}")
    return head[24]


def _probe(path: Path) -> str:
    """Check the declared size of a non-PNG image from its header alone; returns Pillow's mode.

    Pillow's ``open`` parses only the header. It refuses sizes above its own bomb
    limit itself, which is above ours, so that error is ours too. A file Pillow does
    not know is either a TIFF for tifffile ("" here) or not an image at all.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we decide below
            with Image.open(path) as im:
                (width, height), mode = im.size, im.mode
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))  # Pillow keeps the size only in its message
        raise _too_big(path, f"{int(found.group(1)):,}" if found else "too many") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as err:
        if _probe_tiff(path):
            return ""
        raise InputError(path, f"cannot decode as an image ({type(err).__name__}: {short(err)})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_big(path, f"{width}x{height}")
    return mode


def _probe_tiff(path: Path) -> bool:
    """Whether tifffile reads a TIFF that Pillow cannot (float and exotic TIFFs), its size checked."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            width, height = int(page.imagewidth), int(page.imagelength)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile reads either
        return False
    if width * height > MAX_IMAGE_PIXELS:
        raise _too_big(path, f"{width}x{height}")
    return True


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])  # [H, W * planes]
    return arr.reshape(height, width, planes)


def _decode(path: Path, at_least: int | None = None) -> np.ndarray:
    import imageio.v3 as iio

    if _png_bit_depth(path) == 16:
        return _read_png16(path)
    mode = _probe(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imageio/pillow chatter; errors still raise
        if mode in _NOT_RGB_MODES or at_least is not None:
            from PIL import Image

            with Image.open(path) as im:
                if im.format == "JPEG" and at_least is not None:
                    _draft(im, at_least)
                if mode in _NOT_RGB_MODES:
                    return np.asarray(im.convert("RGB"))
                if im.format == "JPEG":
                    return np.asarray(im)  # what imageio returns for a JPEG, less its overhead
        return iio.imread(path, index=0)


def _draft(im, at_least: int) -> None:
    """Have libjpeg decode ``im`` at the smallest of 1/1, 1/2, 1/4, 1/8 scale whose shorter side
    is still ``at_least`` pixels: it drops the DCT coefficients that scale cannot show, which
    skips most of the decoding work and is itself an averaging filter (BENCHMARKS.md, "Decoding")."""
    scale = at_least / min(im.size)
    if scale < 1:
        im.draft(im.mode, (math.ceil(im.width * scale), math.ceil(im.height * scale)))


def read_image(path: Path, at_least: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an image file. Returns values float32 [H, W, C] in [0, 1] and the bit depth.

    ``at_least``: the values will be shrunk until their shorter side is this long, so a JPEG
    may be decoded at a reduced scale (1/2, 1/4, 1/8) that keeps at least that many pixels;
    other formats decode whole. Every failure is an :class:`InputError` naming the file:
    decoders (Pillow, pypng, tifffile, imageio's plugins) raise many types, and all mean
    "not an image we can read".
    """
    with decoding(path, "an image"):
        raw = _decode(path, at_least)
    return to_unit_range(raw, path)


def to_unit_range(raw: np.ndarray, path: Path | str) -> tuple[np.ndarray, int]:
    """Integer or float pixels -> float32 [H, W, C] in [0, 1], and the source bit depth."""
    if raw.ndim == 2:
        raw = raw[..., None]
    if raw.ndim != 3 or raw.shape[0] < 1 or raw.shape[1] < 1 or not 1 <= raw.shape[2] <= 4:
        raise InputError(path, f"unsupported image layout {tuple(raw.shape)}")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0, 8
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0, 16
    if raw.dtype == np.bool_:
        return raw.astype(np.float32), 1
    if np.issubdtype(raw.dtype, np.floating):
        values = raw.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(path, "image contains NaN or infinite values")
        if values.min() < 0 or values.max() > 1:
            raise InputError(path, "floating-point image has values outside [0, 1]")
        return values, 32
    raise InputError(path, f"unsupported pixel type {raw.dtype}")


def quantize(values: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float values in [0, 1] (clamped here) -> uint8 or uint16, rounding to nearest."""
    top = (1 << bit_depth) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return (np.clip(values, 0.0, 1.0) * top + 0.5).astype(dtype)


def output_format(path: Path) -> str:
    """'png' or 'jpeg' from the output path's extension; anything else is an OutputError."""
    ext = path.suffix.lower()
    if ext == ".png":
        return "png"
    if ext in (".jpg", ".jpeg"):
        return "jpeg"
    raise OutputError(path, f"cannot write an image as {ext or 'a file without extension'} (use .png or .jpg)")


def write_image(path: Path, pixels: np.ndarray, fmt: str, *, quality: int = 95) -> None:
    """Write quantised pixels [H, W, C] (uint8; uint16 for 16-bit PNG) as ``fmt``."""
    import imageio.v3 as iio

    h, w, c = pixels.shape
    if pixels.dtype == np.uint16:
        if fmt != "png":
            raise OutputError(path, "16-bit output needs PNG")
        import png

        writer = png.Writer(w, h, greyscale=c <= 2, alpha=c in (2, 4), bitdepth=16)
        with open(path, "wb") as f:
            writer.write_array(f, pixels.reshape(-1))
        _mark_png(path)
    elif fmt == "jpeg":
        if c in (2, 4):  # JPEG has no alpha channel: drop it rather than fail
            pixels, c = pixels[..., :-1], c - 1
        iio.imwrite(path, pixels[..., 0] if c == 1 else pixels, extension=".jpg", quality=quality,
                    comment=SOFTWARE.encode())
    else:
        iio.imwrite(path, pixels[..., 0] if c == 1 else pixels, extension=".png")
        _mark_png(path)


def _mark_png(path: Path) -> None:
    """Add a tEXt chunk "Software: nfit X" after the header (IHDR is always first, 25 bytes
    after the 8-byte signature), so a later render knows this file is one it may replace."""
    data = path.read_bytes()
    body = b"tEXt" + b"Software\0" + SOFTWARE.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    path.write_bytes(data[:33] + chunk + data[33:])


def written_by_nfit(path: Path) -> bool:
    """Whether an image file carries the mark nfit's renders get (PNG Software, JPEG comment)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mark = img.info.get("Software") or img.info.get("comment") or b""
    except Exception:  # noqa: BLE001  unreadable: not a render of ours
        return False
    mark = mark.decode("latin-1", "replace") if isinstance(mark, bytes) else str(mark)
    return mark.startswith(SOFTWARE_NAME)


def header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the header alone, or None when Pillow cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                width, height = im.size
    except Exception:  # noqa: BLE001  the decoder reports unreadable files properly later
        return None
    return height, width


def resize(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] float values -> [h, w, C]: antialiased bicubic (a box-like filter when
    shrinking, so no aliasing), clamped back to [0, 1] (bicubic overshoots at edges)."""
    if tuple(values.shape[:2]) == tuple(size):
        return values
    x = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return x.squeeze(0).permute(1, 2, 0).clamp_(0.0, 1.0).numpy()


# ---------------------------------------------------------------------------- conforming to a dataset grid

LUMA_601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: the usual RGB -> grey


def decode_image(path: Path, at_least: int | None = None) -> np.ndarray:
    """read_image's values: every failure is already an InputError naming the file."""
    return read_image(path, at_least)[0]


def _drop_alpha(pixels: torch.Tensor) -> torch.Tensor:
    """LA -> L, RGBA -> RGB: meta-learned fields model colour only."""
    return pixels[..., :-1] if pixels.shape[-1] in (2, 4) else pixels


def convert_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """[..., 1 or 3] -> [..., channels]: grey repeated, colour to BT.601 luma."""
    c = pixels.shape[-1]
    if c == channels:
        return pixels
    if channels == 3:  # c == 1
        return pixels.expand(*pixels.shape[:-1], 3)
    return pixels @ torch.tensor(LUMA_601, dtype=pixels.dtype).unsqueeze(1)  # c == 3 -> 1


def resize_crop(pixels: torch.Tensor, res: int, like: tuple[int, int] | None = None) -> torch.Tensor:
    """[H, W, C] -> [res, res, C]: shorter side to ``res`` (antialiased bicubic), centre crop.

    ``like``: the (height, width) of the picture ``pixels`` were decoded from at a reduced
    scale; the output is the one that picture would give (the rounding of a reduced decode's
    size must not move the crop: half a pixel of it is 10 dB on a fine texture).
    """
    h, w = like or pixels.shape[:2]
    if h <= w:
        size = (res, max(res, round(w * res / h)))
    else:
        size = (max(res, round(h * res / w)), res)
    if tuple(pixels.shape[:2]) != size:
        x = pixels.permute(2, 0, 1).unsqueeze(0)  # [1, C, H, W]
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        pixels = x.squeeze(0).permute(1, 2, 0)
    pixels = pixels.clamp(0.0, 1.0)  # bicubic overshoots at edges
    top, left = (size[0] - res) // 2, (size[1] - res) // 2
    return pixels[top : top + res, left : left + res]


def load_native(path: Path, channels: int) -> torch.Tensor:
    """Decode one image at its own size as float32 ``[H, W, channels]`` in [0, 1] (1 or 3 channels)."""
    if channels not in (1, 3):
        raise ConfigError("--channels", f"must be 1 or 3, got {channels}")
    pixels = _drop_alpha(torch.from_numpy(np.ascontiguousarray(decode_image(Path(path)), dtype=np.float32)))
    return convert_channels(pixels, channels).contiguous()


def load_image(path: Path, res: int, channels: int, *, draft: bool = True) -> torch.Tensor:
    """Decode one image as a float32 ``[res, res, channels]`` target in [0, 1].

    Every image in a meta-learning batch must share one grid, so the shorter side is
    resized to ``res`` and the centre square kept (no padding, no distortion). ``draft``:
    a JPEG at least twice that size is decoded at a reduced scale first (:func:`read_image`).
    Any failure is an :class:`InputError` naming the file.
    """
    if channels not in (1, 3):
        raise ConfigError("--channels", f"must be 1 or 3, got {channels}")
    if res < 1:
        raise ConfigError("--res", f"must be at least 1, got {res}")
    path = Path(path)
    pixels = torch.from_numpy(np.ascontiguousarray(decode_image(path, res if draft else None), dtype=np.float32))
    pixels = _drop_alpha(pixels)
    if channels == 1:
        pixels = convert_channels(pixels, 1)  # luma before resizing: a third of the work
    pixels = resize_crop(pixels, res, header_size(path) if draft else None)
    # grey -> RGB after resizing, same reason; every step is per channel, so the order does not matter
    return convert_channels(pixels, channels).contiguous()
