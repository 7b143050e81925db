"""The initialisations nfit ships, and fitting from them by default."""


import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nfit.inits as inits
from nfit import api
from nfit.cli import app

from nfit.runs import load_init
from nfit.signals import read_signal

runner = CliRunner()


def test_shipped_image_init_is_valid_and_small():
    path = inits.default_init_path("image")
    assert path is not None and path.stat().st_size < 1 << 20  # under 1 MB
    init = load_init(path)
    assert init.modality == "image" and init.channels == 3 and init.algo["name"] == "gradncp"
    assert "recipe" in init.data and init.data["held_out"]  # it says how it was made and what it never saw
    assert init.tiling is not None and init.shape == init.tiling.tile  # a tile initialisation


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_other_channel_counts_adapt_the_output_layer(channels):
    rgb = inits.default_init("image", 3)
    adapted = inits.default_init("image", channels)
    assert adapted.channels == channels and adapted.field.config.out_dim == channels
    coords = torch.rand(50, 2) * 2 - 1
    out_rgb = rgb.field({k: v[None] for k, v in rgb.params.items()}, coords)[0]  # [N, 3]
    out = adapted.field({k: v[None] for k, v in adapted.params.items()}, coords)[0]  # [N, channels]
    colour = out[:, :1] if channels < 3 else out[:, :3]
    expected = out_rgb.mean(dim=1, keepdim=True) if channels < 3 else out_rgb
    torch.testing.assert_close(colour, expected, rtol=1e-5, atol=1e-6)  # grey = mean of RGB, exactly
    if channels in (2, 4):
        torch.testing.assert_close(out[:, -1], torch.ones(50))  # alpha starts opaque


def test_cli_fit_starts_from_the_shipped_tile_init(tmp_path, photo):
    shipped = load_init(inits.default_init_path("image"))
    for args in ([], ["--init", "default"]):  # without --init, as with --init default
        out = tmp_path / f"a{len(args)}.nf"
        r = runner.invoke(app, ["fit", str(photo), "-o", str(out), "--json", "--steps", "20", *args])
        assert r.exit_code == 0, r.output
        nf = api.load(out)
        assert nf.init["name"] == "default:image" and nf.init["sha256"] == shipped.sha256
        assert nf.tiling == shipped.tiling and nf.summary["method"].startswith("sgd-rescaled")
        assert nf.summary["steps"] <= 20  # --steps counts the SGD steps and Adam's
    r = runner.invoke(app, ["info", str(out)])
    assert "default:image" in r.output  # info names the initialisation
    # --init random, another field or another tiling: random tiles with Adam
    for i, args in enumerate((["--init", "random"], ["--width", "16"], ["--tile", "16"])):
        out = tmp_path / f"r{i}.nf"
        r = runner.invoke(app, ["fit", str(photo), "-o", str(out), "--steps", "3", *args])
        assert r.exit_code == 0, r.output
        nf = api.load(out)
        assert nf.init["name"] == "random" and nf.summary["method"] == "adam" and nf.tiling is not None
    r = runner.invoke(app, ["fit", str(photo), "-o", str(tmp_path / "d.nf"), "--init", "default", "--width", "16"])
    assert r.exit_code == 2 and not (tmp_path / "d.nf").exists()


def test_tiles_refine_with_adam_until_the_target(photo):
    signal = read_signal(photo)
    init = inits.default_init("image", 3)
    [nf] = api.fit_signals([signal], api.FitConfig(steps=5, target_psnr=99.0), init=init,
                           adapt=api.AdaptConfig(steps=2))
    assert nf.summary["method"] == "sgd-rescaled+adam" and nf.summary["steps"] > 2
    [sgd] = api.fit_signals([signal], api.FitConfig(steps=0), init=init, adapt=api.AdaptConfig(steps=2))
    assert sgd.summary["method"] == "sgd-rescaled" and nf.summary["psnr"] > sgd.summary["psnr"]  # Adam went on
    [reached] = api.fit_signals([signal], api.FitConfig(steps=5, target_psnr=1.0), init=init, adapt=api.AdaptConfig(steps=2))
    assert reached.summary["method"] == "sgd-rescaled" and reached.summary["stopped"] == "target_psnr"


def _whole_signal_init(path, shape):
    """A whole-signal initialisation file (random weights: the maps only need one to start from)."""
    from nfit.fieldfile import MetaInit, save_init
    from nfit.fields import build_field

    config = {"in_dim": 2, "out_dim": 3, "width": 32, "depth": 3}
    params = build_field("siren", config).init_params(torch.Generator().manual_seed(0))
    save_init(MetaInit("siren", config, params, "image", shape, 3, {"name": "gradncp", "config": {}},
                       {"steps": 16, "lr": 1e-2, "gamma": 0.25}), path)
    return path


def test_save_context_maps(tmp_path, photo):
    maps = tmp_path / "maps"
    init = _whole_signal_init(tmp_path / "init.safetensors", read_signal(photo).shape)
    r = runner.invoke(app, ["fit", str(photo), "-o", str(tmp_path / "a.nf"), "--init", str(init), "--steps", "3",
                            "--save-context-maps", str(maps)])
    assert r.exit_code == 0, r.output
    import imageio.v3 as iio

    frames = [iio.imread(maps / f"{photo.stem}_context_{k:02d}.png") for k in range(3)]
    h, w = read_signal(photo).shape
    assert all(f.shape == (h, w, 3) for f in frames)
    # a quarter of the pixels (gamma 0.25) are shown at full brightness, the rest dimmed
    image = np.round(read_signal(photo).values * 255)
    bright = np.isclose(frames[0], image, atol=1).all(axis=2)
    assert 0.2 < bright.mean() < 0.6 and not bright.all()
    assert iio.imread(maps / f"{photo.stem}_context.gif").shape[0] == 3
    for init in ("random", "default"):  # none, and a tile initialisation: no maps of a whole signal's context
        r = runner.invoke(app, ["fit", str(photo), "-o", str(tmp_path / "b.nf"), "--init", init,
                                "--save-context-maps", str(tmp_path / "m2")])
        assert r.exit_code == 2 and not (tmp_path / "b.nf").exists()
