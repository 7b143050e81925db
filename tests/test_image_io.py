"""Reading and writing images: every format, layout and bit depth, and the bad files."""

import imageio.v3 as iio
import numpy as np
import png
import pytest
from PIL import Image

from nfit.errors import InputError, OutputError
from nfit.signals import read_signal
from nfit.signals.image import quantize, write_image


def _rgb(photo):
    return iio.imread(photo)  # [32, 48, 3] uint8


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_read_exactly(tmp_path, photo, ext):
    pixels = _rgb(photo)
    path = tmp_path / f"x{ext}"
    iio.imwrite(path, pixels, **({"lossless": True} if ext == ".webp" else {}))
    s = read_signal(path)
    assert s.shape == (32, 48) and s.channels == 3 and s.bit_depth == 8
    np.testing.assert_array_equal(np.round(s.values * 255).astype(np.uint8), pixels)


def test_real_jpeg(data_dir):
    s = read_signal(data_dir / "rocket_48x32.jpg")
    assert s.values.shape == (32, 48, 3) and s.values.dtype == np.float32
    assert 0 <= s.values.min() and s.values.max() <= 1 and s.values.std() > 0.05


def test_grey_and_rgba(tmp_path, data_dir, photo):
    grey = read_signal(data_dir / "camera_32.png")
    assert grey.channels == 1 and grey.shape == (32, 32)
    rgba = np.concatenate([_rgb(photo), np.full((32, 48, 1), 128, np.uint8)], axis=2)
    iio.imwrite(tmp_path / "a.png", rgba)
    s = read_signal(tmp_path / "a.png")
    assert s.channels == 4
    np.testing.assert_allclose(s.values[..., 3], 128 / 255)


def test_palette_png_is_expanded(tmp_path, photo):
    Image.fromarray(_rgb(photo)).convert("P", palette=Image.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    s = read_signal(tmp_path / "p.png")
    assert s.channels == 3 and len(np.unique(s.values.reshape(-1, 3), axis=0)) <= 16


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_png_round_trip_is_exact(tmp_path, channels):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(5, 7, channels), dtype=np.uint16)
    write_image(tmp_path / "x.png", pixels, "png")
    s = read_signal(tmp_path / "x.png")
    assert s.bit_depth == 16 and s.channels == channels
    np.testing.assert_array_equal(quantize(s.values, 16), pixels)
    # and a third-party reader agrees
    _, _, rows, info = png.Reader(filename=str(tmp_path / "x.png")).asDirect()
    assert info["bitdepth"] == 16 and np.vstack(list(rows)).reshape(pixels.shape).tolist() == pixels.tolist()


def test_write_8bit_png_and_jpeg(tmp_path, photo):
    pixels = _rgb(photo)
    write_image(tmp_path / "x.png", pixels, "png")
    np.testing.assert_array_equal(iio.imread(tmp_path / "x.png"), pixels)
    write_image(tmp_path / "x.jpg", pixels, "jpeg", quality=95)
    back = iio.imread(tmp_path / "x.jpg").astype(float)
    assert np.abs(back - pixels).mean() < 6
    rgba = np.concatenate([pixels, pixels[..., :1]], axis=2)
    write_image(tmp_path / "a.jpg", rgba, "jpeg")  # alpha dropped, not an error
    assert iio.imread(tmp_path / "a.jpg").shape == (32, 48, 3)


def test_animated_gif_first_frame(tmp_path):
    frames = np.stack([np.full((6, 5, 3), v, np.uint8) for v in (10, 200)])
    iio.imwrite(tmp_path / "a.gif", frames)
    assert read_signal(tmp_path / "a.gif").shape == (6, 5)


def test_float_tiff_with_nan_is_refused(tmp_path):
    values = np.full((4, 4), 0.5, np.float32)
    values[1, 1] = np.nan
    iio.imwrite(tmp_path / "n.tif", values)
    with pytest.raises(InputError, match="NaN"):
        read_signal(tmp_path / "n.tif")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello, I am text"), "cannot decode"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "cannot decode"),
    ],
)
def test_bad_files(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(InputError, match=reason) as info:
        read_signal(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path, photo):
    path = tmp_path / "t.png"
    path.write_bytes(photo.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot decode"):
        read_signal(path)


def test_unknown_extension_and_directory(tmp_path):
    (tmp_path / "x.xyz").write_text("data")
    with pytest.raises(InputError, match="unsupported file type"):
        read_signal(tmp_path / "x.xyz")
    with pytest.raises(InputError, match="directory"):
        read_signal(tmp_path)


def test_output_format_by_extension():
    from pathlib import Path

    from nfit.signals.image import output_format

    assert output_format(Path("a.PNG")) == "png" and output_format(Path("a.jpeg")) == "jpeg"
    with pytest.raises(OutputError, match=".gif"):
        output_format(Path("a.gif"))
