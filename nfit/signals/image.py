"""Images <-> values in [0, 1] of shape [H, W, C].

Reading goes through imageio (PNG, JPEG, BMP, TIFF, WebP, GIF's first frame).
Pillow, behind imageio, truncates 16-bit colour PNGs to 8 bits, so 16-bit PNGs
are read and written with pypng instead, bit-exactly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from nfit.errors import InputError, OutputError

READ_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_PIXELS = 1 << 28  # 268 MP: refuse decompression bombs before decoding them


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width * height > MAX_PIXELS:
        raise InputError(path, f"image declares {width}x{height} pixels, more than nfit accepts")
    return head[24]


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])  # [H, W * planes]
    return arr.reshape(height, width, planes)


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """Decode an image file. Returns values float32 [H, W, C] in [0, 1] and the bit depth."""
    import imageio.v3 as iio

    if _png_bit_depth(path) == 16:
        raw = _read_png16(path)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # imageio/pillow chatter; errors still raise
                raw = iio.imread(path, index=0)
        except Exception as err:  # imageio raises many types; all mean "not an image we can read"
            raise InputError(path, f"cannot decode as an image ({type(err).__name__}: {_short(err)})") from None
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
    elif fmt == "jpeg":
        if c in (2, 4):  # JPEG has no alpha channel: drop it rather than fail
            pixels, c = pixels[..., :-1], c - 1
        iio.imwrite(path, pixels[..., 0] if c == 1 else pixels, extension=".jpg", quality=quality)
    else:
        iio.imwrite(path, pixels[..., 0] if c == 1 else pixels, extension=".png")


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else "unknown error"
    return text[:160]
