"""Tiled fields: the layout, the blend, tiled rendering against a plain per-sample reference,
tile fitting against fitting tiles one by one, seams on a real photo, files and the CLI."""

import math
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nfit
from nfit import metrics
from nfit.cli import app
from nfit.config import AdaptConfig, FitConfig, TileConfig
from nfit.errors import ConfigError
from nfit.fields import batch_params, build_field
from nfit.render import evaluate_tiles
from nfit.tiled import fit_tiles
from nfit.tiling import Tiling, axis_spans, axis_starts, extract, seam_ratio

SMALL = {"width": 16, "depth": 3}


def test_axis_starts_cover_the_axis_with_whole_overlapping_tiles():
    rng = random.Random(0)
    for _ in range(2000):
        tile = rng.choice([4, 8, 16, 32, 48])
        overlap, length = rng.randint(0, tile // 4), rng.randint(1, 500)
        starts = axis_starts(length, tile, overlap)
        if length <= tile:
            assert starts == [0]
            continue
        assert starts[0] == 0 and starts[-1] == length - tile  # whole tiles, the last one ending at the edge
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(0 < g <= tile - overlap for g in gaps), (length, tile, overlap, starts)  # shared >= overlap


def test_blend_weights_sum_to_one_and_stay_inside_each_tiles_samples():
    rng = random.Random(1)
    for _ in range(500):
        tile = rng.choice([4, 8, 16, 32, 64])
        overlap, length, out = rng.randint(0, tile // 4), rng.randint(1, 300), rng.randint(1, 700)
        spans = axis_spans(length, tile, overlap, out)
        total = torch.zeros(out)
        for k, s in enumerate(spans):
            total[s.lo:s.hi] += s.weights
            inner = s.coords[s.weights > 0]
            # with overlap, a tile is asked between tiles only for values within its own samples
            # (|x| <= 1 - 1/tile); only the signal's own edges are half a sample beyond
            lo = -1 if k == 0 else -1 + 1 / tile
            hi = 1 if k == len(spans) - 1 else 1 - 1 / tile
            if length >= tile and overlap >= 1 and len(inner):
                assert inner.min() >= lo - 1e-5 and inner.max() <= hi + 1e-5, (length, tile, overlap, out, k)
        torch.testing.assert_close(total, torch.ones(out), atol=1e-5, rtol=0)


def test_extract_cuts_tiles_and_pads_short_axes_with_the_edge():
    values = torch.arange(10 * 7 * 2, dtype=torch.float32).reshape(10, 7, 2)
    tiling = Tiling((4, 8), (1, 2))  # the second axis is shorter than a tile
    starts = tiling.starts((10, 7))
    assert starts == [[0, 3, 6], [0]]
    tiles = extract(values, tiling, range(tiling.count((10, 7))))
    assert tiles.shape == (3, 4, 8, 2)
    torch.testing.assert_close(tiles[1, :, :7], values[3:7])
    torch.testing.assert_close(tiles[1, :, 7], values[3:7, 6])  # the last column repeated


def _reference_render(field, params, tiling, shape, out_shape):
    """Every output sample, one at a time: the blend-weighted sum over ALL tiles of their values."""
    spans = [axis_spans(n, t, o, m) for n, t, o, m in zip(shape, tiling.tile, tiling.overlap, out_shape)]
    grid = tiling.grid(shape)
    out = torch.zeros(*out_shape, field.config.out_dim, dtype=torch.float64)
    for index in np.ndindex(*out_shape):
        for t in range(tiling.count(shape)):
            ks = np.unravel_index(t, grid)
            w, coord = 1.0, []
            for axis, (k, j) in enumerate(zip(ks, index)):
                span = spans[axis][k]
                if not span.lo <= j < span.hi:
                    w = 0.0
                    break
                w *= float(span.weights[j - span.lo])
                coord.append(float(span.coords[j - span.lo]))
            if w:
                one = {k: v[t:t + 1] for k, v in params.items()}
                out[index] += w * field(one, torch.tensor([coord])).double()[0, 0]
    return out.clamp(0, 1)


@pytest.mark.parametrize("shape,tile,overlap,out_shape", [
    ((21,), (8,), (2,), (21,)),  # audio-like, native
    ((21,), (8,), (2,), (50,)),  # another rate
    ((13, 18), (6, 6), (1, 1), (13, 18)),
    ((13, 18), (6, 6), (1, 1), (27, 11)),  # up along one axis, down along the other
    ((5, 9, 10), (3, 6, 6), (0, 1, 1), (7, 12, 9)),  # a video block grid at another size and frame rate
    ((4, 5), (6, 8), (1, 2), (9, 9)),  # smaller than one tile
])
def test_tiled_render_equals_a_per_sample_reference(shape, tile, overlap, out_shape):
    tiling = Tiling(tile, overlap)
    field = build_field("siren", {"in_dim": len(shape), "out_dim": 2, "width": 8, "depth": 3})
    g = torch.Generator().manual_seed(0)
    params = batch_params(field.init_params(g), tiling.count(shape))
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in params.items()}  # distinct tiles
    chunks = list(evaluate_tiles(field, params, tiling, shape, out_shape, chunk=40))  # small chunks: many batches
    assert [c[0] for c in chunks] == sorted(c[0] for c in chunks) and chunks[-1][1] == math.prod(out_shape)
    got = torch.cat([v for _, _, v in chunks]).view(*out_shape, 2)
    torch.testing.assert_close(got.double(), _reference_render(field, params, tiling, shape, out_shape),
                               atol=1e-5, rtol=0)


def test_fitting_tiles_in_batches_equals_fitting_them_all_at_once():
    values = torch.from_numpy(nfit.read_signal("tests/data/chelsea_48x32.png").values)
    tiling = Tiling((16, 16), (2, 2))
    field = build_field("siren", {"in_dim": 2, "out_dim": 3, **SMALL})
    start = field.init_params(torch.Generator().manual_seed(0))
    config = FitConfig(steps=6, lr=3e-3)
    kwargs = dict(device=torch.device("cpu"))
    together = fit_tiles(field, start, values, tiling, config, AdaptConfig(), False, batch=100, **kwargs)
    apart = fit_tiles(field, start, values, tiling, config, AdaptConfig(), False, batch=2, **kwargs)
    assert together.method["tile_batches"] == 1 and apart.method["tile_batches"] == 6
    for k in together.params:
        torch.testing.assert_close(together.params[k], apart.params[k], rtol=1e-4, atol=1e-6)


def test_tile_batches_hold_a_bounded_number_of_samples(monkeypatch):
    values = torch.from_numpy(nfit.read_signal("tests/data/chelsea_48x32.png").values)
    field = build_field("siren", {"in_dim": 2, "out_dim": 3, **SMALL})
    start = field.init_params(torch.Generator().manual_seed(0))
    monkeypatch.setattr(nfit.tiled, "TILE_BATCH_SAMPLES", 3 * 16 * 16 + 5)  # three 16x16 tiles
    fitted = fit_tiles(field, start, values, Tiling((16, 16), (2, 2)), FitConfig(steps=1), AdaptConfig(), False,
                       batch=100, device=torch.device("cpu"))
    assert fitted.method["tiles"] == 12 and fitted.method["tile_batches"] == 4


def test_a_time_budget_stops_the_fit_and_says_so():
    nf = nfit.fit("tests/data/coffee_128x96.png", steps=10_000, seconds=1.0, target_psnr=0, **SMALL)
    assert nf.summary["stopped"] == "seconds" and nf.summary["steps"] < 10_000
    nf = nfit.fit("tests/data/coffee_128x96.png", steps=500, target_psnr=20, **SMALL)
    assert nf.summary["stopped"] == "target_psnr" and nf.summary["psnr"] >= 20
    nf = nfit.fit("tests/data/coffee_128x96.png", tile=0, steps=10_000, seconds=1.0, **SMALL)  # a whole field too
    assert nf.summary["stopped"] == "seconds" and nf.summary["steps"] < 10_000


def _fit_and_render_2x(tmp_path, overlap):
    nf = nfit.fit("tests/data/coffee_128x96.png", tile=16, overlap=overlap, steps=80, target_psnr=0, seed=1,
                  width=16, depth=3)
    rendered = nfit.render(nf, width=256, height=192)
    return nf, [seam_ratio(rendered, nf.tiling, nf.shape, axis) for axis in (0, 1)]


def test_a_2x_render_of_a_real_photo_shows_no_seams(tmp_path):
    """The measure of the issue: across tile borders neighbours differ no more than elsewhere (<= 1.3x);
    tiles that abut (no overlap, so a 2x render asks them for values half a pixel outside) do show."""
    nf, ratios = _fit_and_render_2x(tmp_path, overlap=4)
    assert nf.summary["psnr"] > 30
    assert max(ratios) <= 1.3, ratios
    _, abutting = _fit_and_render_2x(tmp_path, overlap=0)
    assert max(abutting) > max(ratios) and max(abutting) > 1.3, abutting


def test_tiled_field_file_round_trip_and_info(tmp_path, monkeypatch):
    nf = nfit.fit("tests/data/coffee_128x96.png", steps=3, dtype="float16", **SMALL)
    assert nf.tiling == Tiling((32, 32), (4, 4)) and nf.tiles == 4 * 5
    target = torch.from_numpy(nfit.read_signal("tests/data/coffee_128x96.png").values)[None]
    # the summary's PSNR, accumulated block by block, is that of the whole render of what is stored
    assert nf.summary["psnr"] == pytest.approx(float(metrics.psnr(nf.render()[None], target)[0]), abs=1e-3)
    monkeypatch.setattr(nfit.rate, "MAX_SSIM_SAMPLES", 0)  # a large signal: PSNR block by block, no SSIM
    assert nfit.rate.measure(nf, target[0], torch.device("cpu")) == (pytest.approx(nf.summary["psnr"], abs=1e-3), None)
    path = nf.save(tmp_path / "c.nf")
    back = nfit.load(path)
    assert back.tiling == nf.tiling and back.params["l0.weight"].shape == (20, 16, 2)
    torch.testing.assert_close(back.render(), nf.render())
    info = nfit.info(path)
    assert info["tiling"]["count"] == 20 and info["tiling"]["grid"] == [4, 5]
    assert info["parameters"] == 20 * (2 * 16 + 16 + 16 * 16 + 16 + 16 * 3 + 3)


def test_tiled_files_with_a_bad_tiling_are_refused(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = nfit.fit("tests/data/chelsea_48x32.png", steps=1, bits=0, **SMALL).save(tmp_path / "c.nf")
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["nfit"])
    for tiling, reason in [({**meta["tiling"], "layout": "spiral"}, "another layout"),
                           ({**meta["tiling"], "overlap": [30, 30]}, "quarter of the tile"),
                           ({**meta["tiling"], "tile": [16]}, "malformed")]:
        bad = tmp_path / "bad.nf"
        save_file(tensors, str(bad), metadata={"nfit": json.dumps({**meta, "tiling": tiling})})
        with pytest.raises(nfit.errors.FieldFileError, match=reason):
            nfit.load(bad)
    save_file({k: v[:1] for k, v in tensors.items()}, str(bad), metadata={"nfit": json.dumps(meta)})
    with pytest.raises(nfit.errors.FieldFileError, match="shape"):  # fewer tiles than the tiling needs
        nfit.load(bad)


NERV = {"strides": [2, 2], "channels": [8, 8], "base_channels": 8, "mlp_width": 16, "pe_levels": 4}


def test_tile_zero_fits_one_field_and_nerv_is_cut_along_time_only():
    whole = nfit.fit("tests/data/chelsea_48x32.png", steps=1, tile=0, **SMALL)
    assert whole.tiling is None and whole.params["l0.weight"].shape == (16, 2)
    clip = nfit.fit("tests/data/video/carphone_88x72.mp4", field="nerv", field_config=NERV, steps=1,
                    options=nfit.config.SignalOptions(frames=6))
    assert clip.tiling is None  # no longer than one chunk: the papers' clip-level field, unchanged
    long = nfit.fit("tests/data/video/carphone_88x72.mp4", field="nerv", field_config=NERV, steps=3, tile_frames=4,
                    options=nfit.config.SignalOptions(frames=8))
    assert long.tiling == Tiling((4, 72, 88), (1, 0, 0)) and long.tiles == 3 and long.summary["tiles"] == 3
    assert long.params["head.bias"].shape == (3, 3)  # one NeRV per chunk of frames
    assert nfit.render(long, width=44, height=36).shape == (8, 36, 44, 3)
    for bad in (dict(tile=16), dict(overlap=1)):
        with pytest.raises(ConfigError, match="along time only"):
            nfit.fit("tests/data/video/carphone_88x72.mp4", field="nerv", field_config=NERV, steps=1, **bad,
                     options=nfit.config.SignalOptions(frames=8))
    with pytest.raises(ConfigError, match="quarter"):
        TileConfig(tile=16, overlap=5).sizes("image")


@pytest.mark.parametrize("out_shape", [(10, 8, 8), (23, 12, 4), (4, 8, 8)])
def test_chunked_nerv_render_equals_a_per_frame_reference(out_shape):
    shape, tiling = (10, 8, 8), Tiling((4, 8, 8), (1, 0, 0))
    field = build_field("nerv", {**NERV, "frame_height": 8, "frame_width": 8, "out_dim": 2, "channels": [4, 4],
                                 "base_channels": 4})
    g = torch.Generator().manual_seed(0)
    params = batch_params(field.init_params(g), tiling.count(shape))
    params = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in params.items()}  # distinct chunks
    chunks = list(evaluate_tiles(field, params, tiling, shape, out_shape, chunk=100))  # a frame or two at a time
    assert [c[0] for c in chunks] == sorted(c[0] for c in chunks) and chunks[-1][1] == math.prod(out_shape)
    got = torch.cat([v for _, _, v in chunks]).view(*out_shape, 2)
    want = torch.zeros(*out_shape, 2, dtype=torch.float64)
    for j in range(out_shape[0]):  # every output frame: the blend-weighted sum over ALL chunks
        for k, span in enumerate(axis_spans(shape[0], 4, 1, out_shape[0])):
            if span.lo <= j < span.hi:
                one = {n: v[k:k + 1] for n, v in params.items()}
                frame = field.from_units(field(one, span.coords[j - span.lo].view(1, 1)), (1, *out_shape[1:]))
                want[j] += float(span.weights[j - span.lo]) * frame.view(*out_shape[1:], 2).double()
    torch.testing.assert_close(got.double(), want.clamp(0, 1), atol=1e-5, rtol=0)


def test_audio_windows_render_at_another_rate_without_clicks():
    nf = nfit.fit("tests/data/audio/digit1_8k.wav", tile=256, steps=80, target_psnr=0, width=16, depth=3)
    assert nf.tiling.tile == (256,) and nf.summary["psnr"] > 25
    rendered = nfit.render(nf, sample_rate=16_000)  # 2x the samples
    assert max(seam_ratio(rendered, nf.tiling, nf.shape, 0), 0) <= 1.3


def test_video_blocks_fit_and_render_at_another_size():
    nf = nfit.fit("tests/data/video/carphone_88x72.mp4", steps=2, tile=16, tile_frames=4, width=8, depth=2,
                  options=nfit.config.SignalOptions(frames=6))
    assert nf.tiling == Tiling((4, 16, 16), (1, 2, 2)) and nf.shape == (6, 72, 88)
    assert nfit.render(nf, width=44, height=36).shape == (6, 36, 44, 3)


def test_cli_fit_defaults_to_tiles_and_render_and_info_follow(tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.nf"
    result = runner.invoke(app, ["fit", "tests/data/coffee_128x96.png", "-o", str(out), "--steps", "5", "--json"])
    assert result.exit_code == 0, result.output
    row = __import__("json").loads(result.stdout)
    assert row["tiles"] == 20 and row["stopped"] in ("steps", "target_psnr")
    result = runner.invoke(app, ["info", str(out)])
    assert "4 x 5 = 20 tiles of 32 x 32, overlap 4 x 4" in result.output
    result = runner.invoke(app, ["render", str(out), "--res", "256", "-o", str(tmp_path / "big.png")])
    assert result.exit_code == 0 and (tmp_path / "big.png").is_file()
    result = runner.invoke(app, ["fit", "tests/data/coffee_128x96.png", "-o", str(tmp_path / "d.nf"), "--tile", "16",
                                 "--overlap", "5"])
    assert result.exit_code == 2 and "quarter" in result.output


# ---------------------------------------------------------------------------- tile meta-learning


def _tile_run(data, run, steps=4, workers=0, algo="gradncp"):
    from nfit.config import DataConfig, FieldOptions, TrainConfig
    from nfit.train import meta_train

    cfg = TrainConfig(algo=algo, steps=steps, batch_size=4, log_every=1, val_every=2, ckpt_every=2, test_steps=2,
                      device="cpu")
    data_cfg = DataConfig(tile=8, workers=workers, val_fraction=0.25, val_limit=2)
    return meta_train(data, run, cfg, data_cfg, FieldOptions(width=8, depth=3), {"inner_steps": 2})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos of different sizes (tiles are cut at each file's own scale)."""
    import shutil

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea_48x32.png", "rocket_48x32.jpg", "coffee_128x96.png", "zz_camera_32.png"):
        source = name.removeprefix("zz_")  # grey, converted to RGB: the first file sets the channels
        shutil.copy(f"tests/data/{source}", folder / name)
    return folder


@pytest.mark.parametrize("algo", ["maml", "gradncp", "sparse"])
def test_meta_train_on_tiles_of_files_at_their_own_size(photos, tmp_path, algo):
    from nfit.runs import load_init

    if algo == "sparse":
        from nfit.config import AlgoOptions, TrainConfig
        from nfit.train import meta_train

        _tile_run(photos, tmp_path / "dense", steps=2)
        meta_train(photos, tmp_path / "run", TrainConfig(algo="sparse", batch_size=4, test_steps=2, device="cpu"),
                   algo_options=AlgoOptions(rounds=2, steps_per_round=1), init_from=tmp_path / "dense")
    else:
        _tile_run(photos, tmp_path / "run", algo=algo)
    init = load_init(tmp_path / "run")
    assert init.tiling == Tiling((8, 8), (1, 1)) and init.shape == (8, 8) and init.data["tile"] == [8, 8]
    assert init.data["res"] is None  # never resized
    if algo == "sparse":  # a sparse tiled field stores each tile's survivors; its mask is the init's
        nf = nfit.fit("tests/data/chelsea_48x32.png", init=tmp_path / "run", steps=3)
        back = nfit.load(nf.save(tmp_path / "s.nf"), init=tmp_path / "run")
        assert back.mask is not None and nfit.info(tmp_path / "s.nf")["values"] == init.n_values * nf.tiles
        torch.testing.assert_close(back.render(), nf.render())


def test_tile_runs_resume_exactly_and_decode_in_workers(photos, tmp_path):
    from nfit.config import TrainConfig
    from nfit.runs import load_init
    from nfit.train import meta_train

    _tile_run(photos, tmp_path / "straight", steps=4, workers=2)
    _tile_run(photos, tmp_path / "split", steps=2)
    meta_train(None, tmp_path / "split", TrainConfig(steps=4), resume=True)
    a, b = load_init(tmp_path / "straight").params, load_init(tmp_path / "split").params
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same tiles, cut in workers or not


def test_fit_and_eval_from_a_tile_initialisation(photos, tmp_path):
    _tile_run(photos, tmp_path / "run")
    nf = nfit.fit("tests/data/coffee_128x96.png", init=tmp_path / "run", steps=5, target_psnr=0)
    assert nf.tiling == Tiling((8, 8), (1, 1)) and nf.tiles == nf.tiling.count((96, 128))
    assert nf.summary["adam_lr"] == 1e-3 and 2 <= nf.summary["steps"] <= 5  # --steps counts SGD (the init's 2) and Adam
    assert nf.summary["method"] == "sgd-rescaled+adam" and nf.init["name"] == "meta"
    assert nf.init["sha256"] == nfit.runs.load_init(tmp_path / "run").sha256 and nf.summary["stopped"] and nf.summary["stopped"] in ("steps", "target_psnr")
    with pytest.raises(ConfigError, match="decides the tiling"):
        nfit.fit("tests/data/coffee_128x96.png", init=tmp_path / "run", tile=0)
    reports = nfit.api.compare([tmp_path / "run", "random"], photos, config=AdaptConfig(steps=2, batch_size=4),
                               field_options=nfit.config.FieldOptions(width=8, depth=3))
    for r in reports:  # whole files at their own size, fitted tile by tile: one PSNR per file and step
        assert r.tiling["tile"] == [8, 8] and r.signals == 4 and len(r.results["rescaled"]["psnr_mean"]) == 3
    assert reports[1].init == "random"
