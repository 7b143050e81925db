"""Rendering at any size, in chunks, to files."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from nfit.errors import ConfigError, OutputError
from nfit.fieldfile import NeuralField
from nfit.fields import build_field
from nfit.render import decode, render_pixels, render_to_file, render_values


def _nf(shape=(30, 45), channels=3, bit_depth=8):
    cfg = {"in_dim": 2, "out_dim": channels, "width": 16, "depth": 3}
    params = build_field("siren", cfg).init_params(torch.Generator().manual_seed(1))
    return NeuralField("siren", cfg, params, "image", shape, channels, bit_depth=bit_depth)


def test_chunking_does_not_change_values():
    nf = _nf()
    whole = render_values(nf, (40, 60), chunk=10**6)
    torch.testing.assert_close(render_values(nf, (40, 60), chunk=97), whole)
    assert whole.shape == (40, 60, 3) and 0 <= whole.min() and whole.max() <= 1


def test_forward_never_sees_more_than_a_chunk(monkeypatch):
    nf = _nf()
    seen = []
    field = nf.field
    original = type(field).__call__

    def spy(self, params, coords, **kw):
        seen.append(coords.shape[0])
        return original(self, params, coords, **kw)

    monkeypatch.setattr(type(field), "__call__", spy)
    pixels = render_pixels(nf, (64, 64), 8, chunk=1000)
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert max(seen) <= 1000 and sum(seen) == 64 * 64


def test_native_render_matches_batched_evaluation():
    nf = _nf()
    params = {k: v[None] for k, v in nf.params.items()}
    torch.testing.assert_close(render_values(nf).reshape(1, -1, 3), decode(nf.field, params, nf.shape))


@pytest.mark.parametrize(
    "kwargs, size",
    [({}, (30, 45)), ({"res": 90}, (60, 90)), ({"width": 90}, (60, 90)), ({"height": 15}, (15, 22)),
     ({"width": 7, "height": 11}, (11, 7))],
)
def test_render_to_file_sizes(tmp_path, kwargs, size):
    path, shape = render_to_file(_nf(), tmp_path / "o.png", device="cpu", **kwargs)
    assert shape == size and iio.imread(path).shape == (*size, 3)


def test_16bit_source_renders_16bit_png(tmp_path):
    nf = _nf(channels=1, bit_depth=16)
    render_to_file(nf, tmp_path / "o.png", device="cpu")
    from nfit.signals import read_signal

    assert read_signal(tmp_path / "o.png").bit_depth == 16
    render_to_file(nf, tmp_path / "o8.png", bit_depth=8, device="cpu")
    assert read_signal(tmp_path / "o8.png").bit_depth == 8


def test_render_errors_leave_nothing(tmp_path):
    nf = _nf()
    with pytest.raises(OutputError, match="cannot write an image as .gif"):
        render_to_file(nf, tmp_path / "o.gif")
    with pytest.raises(OutputError, match="does not exist"):
        render_to_file(nf, tmp_path / "missing" / "o.png")
    with pytest.raises(ConfigError, match="16-bit"):
        render_to_file(nf, tmp_path / "o.jpg", bit_depth=16)
    assert list(tmp_path.iterdir()) == []
