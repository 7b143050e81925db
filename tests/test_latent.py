"""Latent-grid fields (nfit.fields.grid) fitted for their coded size (nfit.latent, nfit.rate.store_latents)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import nfit
from nfit.cli import app
from nfit.coding import encode
from nfit.config import LATENT_FIT, FitConfig, SignalOptions
from nfit.errors import ConfigError, NfitWarning
from nfit.fieldfile import field_bytes, load_field
from nfit.fields import LatentGrid, build_field, unbatch_params
from nfit.latent import RateGoal, fit_latents, laplace_bits, lr_share
from nfit.signals import read_signal
from nfit.signals.grid import grid_coords
from conftest import make_crops

DATA = Path(__file__).parent / "data"
PHOTO = DATA / "coffee_128x96.png"  # a real photo (tests/data/README.md)
SPEECH = DATA / "audio" / "digit1_8k.wav"


def _random_params(field: LatentGrid, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = {k: v.unsqueeze(0).repeat(batch, *[1] * v.dim()) for k, v in field.init_params(g).items()}
    for k in field.latent_names:
        params[k] = torch.randn(params[k].shape, generator=g) * 3
    return params


@pytest.mark.parametrize("size", [(5, 7), (16, 9)])
def test_levels_sampled_at_pixel_centres_match_bilinear_upsampling(size):
    """At the signal's own pixel centres, each level is torch's bilinear upsampling of it (align_corners=False)."""
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(size), "levels": 4})
    params = _random_params(field, batch=2)
    got = field.sample(params, grid_coords(size))  # [2, N, 4]
    for level, name in enumerate(field.latent_names):
        want = F.interpolate(params[name].unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(got[..., level], want.reshape(2, -1), rtol=1e-5, atol=1e-5)
    assert field.level_shape(3) == tuple(math.ceil(n / 8) for n in size)


@pytest.mark.parametrize("in_dim,size,floor", [(1, (23,), 1.0), (2, (6, 11), 1.0), (3, (3, 5, 4), 1.0), (2, (6, 11), 0.25)])
def test_on_grid_is_the_field_at_grid_coordinates(in_dim, size, floor):
    """The fitting path (MLP once per sample, the mixing as a convolution with replicated edges) against
    the field's definition (the mixing as a sum over shifted coordinates)."""
    field = build_field("grid", {"in_dim": in_dim, "out_dim": 3, "size": list(size), "levels": 3, "gain_floor": floor})
    params = _random_params(field, batch=2, seed=in_dim)
    g = torch.Generator().manual_seed(7)
    params["mix.weight"] = torch.randn(params["mix.weight"].shape, generator=g) * 0.3
    params["mix.bias"] = torch.randn(params["mix.bias"].shape, generator=g) * 0.1
    torch.testing.assert_close(field.on_grid(params, size), field(params, grid_coords(size)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_dim,size,renders", [(1, (7,), [(7,), (14,), (10,), (3,)]),
                                                  (2, (9, 12), [(9, 12), (18, 24), (27, 36), (13, 5), (4, 4)]),
                                                  (3, (4, 6, 5), [(4, 6, 5), (8, 12, 10), (5, 7, 3)])])
def test_rows_of_any_grid_are_the_field_at_its_coordinates(in_dim, size, renders):
    """The render path (levels interpolated axis by axis, the MLP once per distinct point) against the field's
    definition, in float64 so that any difference is a mistake, at native, integer and fractional scales,
    chunked into rows."""
    field = build_field("grid", {"in_dim": in_dim, "out_dim": 3, "size": list(size), "levels": 3, "gain_floor": 0.25,
                                 "slope": 0.01})
    params = {k: v.double() for k, v in _random_params(field, batch=2, seed=in_dim).items()}
    g = torch.Generator().manual_seed(7)
    params["mix.weight"] = torch.randn(params["mix.weight"].shape, generator=g, dtype=torch.float64) * 0.3
    for shape in renders:
        want = field(params, grid_coords(shape, dtype=torch.float64))
        got = torch.cat([field.grid_rows(params, shape, lo, min(lo + 2, shape[0])) for lo in range(0, shape[0], 2)], 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)


def test_level_gains_scale_each_level_and_files_without_them_keep_gain_one():
    """Level l's latents reach the MLP times max(floor, min(1, 2^(1 - l))): the same as a field of gain 1
    given the scaled latents. A config without gain_floor (the first grid files) has every gain 1."""
    size = (6, 11)
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(size), "levels": 5, "gain_floor": 0.25})
    plain = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(size), "levels": 5})
    assert field.config.level_gains() == [1.0, 1.0, 0.5, 0.25, 0.25] and plain.config.level_gains() == [1.0] * 5
    params = _random_params(field, batch=2)
    scaled = {k: v * field.config.level_gains()[int(k[1:])] if k in field.latent_names else v for k, v in params.items()}
    torch.testing.assert_close(field.on_grid(params, size), plain.on_grid(scaled, size))
    coords = torch.rand(40, 2) * 2 - 1
    torch.testing.assert_close(field(params, coords), plain(scaled, coords))
    with pytest.raises(ConfigError, match="gain_floor"):
        nfit.fit(PHOTO, field="grid", steps=1, field_config={"gain_floor": 0})


def test_hidden_slope_makes_a_leaky_relu_and_files_without_it_keep_relu():
    """``slope`` s: the MLP's hidden units are max(x, s x), on the fitting, definition and render paths alike
    (the tests above check those agree); a config without it (files before it) has plain ReLU units."""
    size = (6, 11)
    leaky = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(size), "levels": 3, "slope": 0.1})
    plain = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(size), "levels": 3})
    assert plain.config.slope == 0.0
    params = _random_params(leaky, batch=2)
    coords = torch.rand(40, 2) * 2 - 1

    def mlp(slope: float) -> torch.Tensor:
        h = leaky.sample(params, coords)
        for i in range(len(leaky.dims) - 1):
            h = h @ params[f"l{i}.weight"].transpose(1, 2) + params[f"l{i}.bias"].unsqueeze(1)
            if i < len(leaky.dims) - 2:
                assert (h < 0).any()  # the slope is exercised
                h = torch.maximum(h, slope * h)
        return h + 0.5

    torch.testing.assert_close(leaky.synthesis(params, coords)[0], mlp(0.1))
    torch.testing.assert_close(plain.synthesis(params, coords)[0], mlp(0.0))
    torch.testing.assert_close(leaky.on_grid(params, size), leaky(params, grid_coords(size)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(leaky.on_grid(params, size), plain.on_grid(params, size))
    with pytest.raises(ConfigError, match="slope"):
        nfit.fit(PHOTO, field="grid", steps=1, field_config={"slope": 1.0})


def test_each_level_steps_lr_over_its_gain():
    """Adam's first step moves every parameter by about lr: a level of gain 1/4 moves 4x as far in its
    own units, so every level moves alike in the MLP's."""
    signal, targets = _photo_targets()
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(signal.shape), "gain_floor": 0.25})
    init = field.init_params(torch.Generator().manual_seed(0))
    lr = 1e-3
    result = fit_latents(field, init, targets, signal.shape, FitConfig(steps=1, lr=lr), RateGoal())
    for gain, name in zip(field.config.level_gains(), field.latent_names):
        assert result.params[name].abs().max().item() == pytest.approx(lr / gain, rel=0.01)


@pytest.mark.parametrize("in_dim,size", [(1, (37,)), (2, (6, 11)), (3, (3, 5, 4))])
def test_batched_evaluation_is_each_signal_alone(in_dim, size):
    field = build_field("grid", {"in_dim": in_dim, "out_dim": 2, "size": list(size), "levels": 3})
    params = _random_params(field, batch=3, seed=in_dim)
    coords = torch.rand(50, in_dim) * 2.2 - 1.1  # beyond the edges too: clamped to the border
    together = field(params, coords)
    assert together.shape == (3, 50, 2)
    for b in range(3):
        alone = field({k: v[b:b + 1] for k, v in params.items()}, coords)
        torch.testing.assert_close(together[b:b + 1], alone)


def test_per_signal_gradients_match_loop():
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": [6, 9], "levels": 3})
    params = {k: v.double() for k, v in _random_params(field, batch=3).items()}
    params["mix.weight"] = params["mix.weight"] + 0.1
    coords, targets = grid_coords((6, 9)).double(), torch.rand(3, 54, 3, dtype=torch.float64)
    batched = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = (field.on_grid(batched, (6, 9)) - targets).pow(2).mean(dim=(1, 2)).sum()
    grads = torch.autograd.grad(loss, list(batched.values()))
    for i in range(3):
        single = {k: v[i:i + 1].clone().requires_grad_(True) for k, v in params.items()}
        gi = torch.autograd.grad((field(single, coords) - targets[i:i + 1]).pow(2).mean(), list(single.values()))
        for g, g1 in zip(grads, gi):
            torch.testing.assert_close(g[i], g1[0])


@pytest.mark.parametrize("size", [(37,), (600, 800), (601, 37), (9, 20, 30)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upsampling_backward_is_autograd_through_interpolate(size, dtype):
    """sample_grid's upsampling has its backward written out (the transposed interpolation): the same
    gradient as autograd through F.interpolate, for sizes a level's cells do not divide."""
    field = build_field("grid", {"in_dim": len(size), "out_dim": 1, "size": list(size), "levels": 7, "gain_floor": 0.25})
    params = {k: v.to(dtype).requires_grad_(True) for k, v in _random_params(field, batch=2).items()}
    weight = torch.randn(2, field.config.levels, *size, dtype=dtype)  # a loss that weighs every level's samples
    got = torch.autograd.grad((field.sample_grid(params) * weight).sum(), [params[k] for k in field.latent_names])
    mode = ("linear", "bilinear", "trilinear")[len(size) - 1]
    for level, (name, gain) in enumerate(zip(field.latent_names, field.config.level_gains())):
        up = F.interpolate(params[name].unsqueeze(1), size=size, mode=mode, align_corners=False)[:, 0]
        want = torch.autograd.grad((gain * up * weight[:, level]).sum(), params[name])[0]
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got[level], want, rtol=tol, atol=tol * want.abs().max().item())


def test_one_dimensional_levels_match_linear_upsampling():
    field = build_field("grid", {"in_dim": 1, "out_dim": 1, "size": [19], "levels": 3})
    params = _random_params(field, batch=1)
    got = field.sample(params, grid_coords((19,)))
    for level, name in enumerate(field.latent_names):
        want = F.interpolate(params[name].unsqueeze(1), size=19, mode="linear", align_corners=False)
        torch.testing.assert_close(got[..., level], want.reshape(1, -1), rtol=1e-5, atol=1e-5)


def test_the_fits_rate_under_its_model_is_what_the_coder_spends():
    """A fit's estimate of its latents' bits (its autoregressive model, floats, on the rounded latents) is the
    payload's share for them within 3%: steering aims at the bytes that will be written."""
    from nfit.latent import _measure

    nf = nfit.fit(PHOTO, field="grid", steps=80, seed=2)
    values = torch.from_numpy(read_signal(PHOTO).values).reshape(1, -1, 3)
    batched = {k: v.unsqueeze(0) for k, v in nf.params.items()}
    _, estimate = _measure(nf.field, batched, nf.shape, values)
    names = nf.field.latent_names
    latents_only = dataclasses.replace(nf, params={k: v * 0 if k in names else v for k, v in nf.params.items()})
    empty = dataclasses.replace(nf, quantised=dataclasses.replace(
        nf.quantised, q={k: v * 0 if k in names else v for k, v in nf.quantised.q.items()}), params=latents_only.params)
    spent = 8 * (field_bytes(nf) - field_bytes(empty))
    assert abs(spent - float(estimate[0])) <= 0.03 * spent + 64


def test_laplace_bits_against_a_plain_reference_and_the_coder():
    """The rate estimate: the discretised Laplace by its formula, and within a few per cent of the coder's bytes."""
    rng = np.random.default_rng(0)
    q = torch.from_numpy(np.round(rng.laplace(0, 2.0, 20_000))).float().reshape(1, -1)
    scale = 2.0
    cdf = lambda v: np.where(v < 0, 0.5 * np.exp(v / scale), 1 - 0.5 * np.exp(-v / scale))  # noqa: E731
    x = q.numpy().astype(np.float64)
    want = -np.log2(cdf(x + 0.5) - cdf(x - 0.5)).sum()
    got = float(laplace_bits(q, torch.tensor([math.log(scale)])))
    assert got == pytest.approx(want, rel=1e-4)
    payload, _ = encode({"q": q.reshape(-1).to(torch.int16)}, 16)
    assert len(payload) * 8 == pytest.approx(got, rel=0.05)
    # the estimate is a differentiable function of the scale, lowest near the integers' own scale
    bits = [float(laplace_bits(q, torch.tensor([math.log(s)]))) for s in (0.5, 2.0, 8.0)]
    assert bits[1] < bits[0] and bits[1] < bits[2]


def _photo_targets():
    signal = read_signal(PHOTO)
    return signal, torch.from_numpy(signal.values).reshape(1, -1, signal.values.shape[-1])


def test_fit_learns_integer_latents_and_lambda_trades_quality_for_bits():
    signal, targets = _photo_targets()
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(signal.shape)})
    init = field.init_params(torch.Generator().manual_seed(0))
    config = FitConfig(steps=100, lr=2e-2)  # at 1e-2 the decaying step size leaves 100 steps short of travel
    cheap = fit_latents(field, init, targets, signal.shape, config, RateGoal(lam=3e-2))
    rich = fit_latents(field, init, targets, signal.shape, config, RateGoal(lam=1e-4))
    for result in (cheap, rich):  # rounding's last stretch leaves them near integers
        for k in field.latent_names:
            assert (result.params[k] - result.params[k].round()).abs().max() < 0.5
    assert rich.psnr[0] > cheap.psnr[0] and rich.bits[0] > 3 * cheap.bits[0]  # measured: 27.95 / 26.05 dB, 6.6x
    assert cheap.psnr[0] > 22  # a real photo at 0.3 bits per pixel, 100 steps


def test_step_size_falls_along_a_cosine_and_the_rounded_stretch_takes_a_share(monkeypatch):
    """Every group's step size is its peak times the cosine decay at the fit's progress, times hard_lr once
    the latents are rounded: what 800 steps needed to score 2 dB more than 400 (BENCHMARKS.md)."""
    signal, targets = _photo_targets()
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(signal.shape), "levels": 3})
    seen = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (seen.append([g["lr"] for g in
                        self.param_groups]), step(self, *a, **k))[1])
    fit_latents(field, field.init_params(torch.Generator().manual_seed(0)), targets, signal.shape,
                FitConfig(steps=20, lr=1e-2), RateGoal())
    peaks = seen[0]
    floor, hard = LATENT_FIT["decay"], LATENT_FIT["hard_lr"]
    for i, lrs in enumerate(seen):
        done = i / 20
        share = (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))) * (hard if done >= 0.8 else 1.0)
        assert lrs == pytest.approx([p * share for p in peaks])
    assert peaks[-1] == 1e-2 and peaks[0] == 1e-2  # the MLP's and the first level's (gain 1) at lr


def test_steering_lands_near_a_rate_goal_from_a_first_lambda_far_off(monkeypatch):
    signal, targets = _photo_targets()
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(signal.shape)})
    init = field.init_params(torch.Generator().manual_seed(0))
    goal = 1.0 * math.prod(signal.shape)  # 1 bit per pixel: lambda ~3e-4 here
    config = FitConfig(steps=300, lr=2e-2)
    for first in (1e-4, 3e-3):  # 3x under and 10x over: re-aimed early, then steered
        result = fit_latents(field, init, targets, signal.shape, config, RateGoal(lam=first, bits=goal))
        assert 0.8 * goal < result.bits[0] < 1.25 * goal, first  # measured 1.15x and 0.88x
    monkeypatch.setitem(LATENT_FIT, "aim_at", 2.0)  # never re-aimed: steering alone moves the rate too late
    late = fit_latents(field, init, targets, signal.shape, config, RateGoal(lam=3e-3, bits=goal))
    assert late.bits[0] < 0.75 * goal  # measured 0.67x


def test_batched_fit_is_each_signal_alone():
    """Two signals fitted together follow the paths they follow alone (same noise draws per signal aside)."""
    signal, targets = _photo_targets()
    field = build_field("grid", {"in_dim": 2, "out_dim": 3, "size": list(signal.shape), "levels": 3})
    init = field.init_params(torch.Generator().manual_seed(0))
    config = FitConfig(steps=12, lr=1e-2)
    two = torch.cat([targets, targets.flip(-1)])
    # all-hard (no noise): the paths are deterministic
    goal = RateGoal(lam=1e-3)
    import nfit.latent as latent
    hard = dict(latent.LATENT_FIT, hard=1.0)
    mp = pytest.MonkeyPatch()
    mp.setattr(latent, "LATENT_FIT", hard)
    try:
        together = fit_latents(field, init, two, signal.shape, config, goal)
        alone = fit_latents(field, init, two[1:], signal.shape, config, goal)
    finally:
        mp.undo()
    for k in together.params:
        torch.testing.assert_close(unbatch_params(together.params, 1)[k], alone.params[k][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arm", [8, 0])
def test_fit_store_and_render_a_real_photo(tmp_path, arm):
    """With its autoregressive model of the latents (the default) and without (format 5's coding)."""
    nf = nfit.fit(PHOTO, field="grid", steps=100, seed=1, **({} if arm else {"field_config": {"arm": 0}}))
    assert nf.tiling is None and nf.field_name == "grid" and nf.quantised is not None
    assert nf.summary["method"] == "adam-rd" and nf.summary["psnr"] > 20 and nf.field.config.arm == arm
    out = tmp_path / "coffee.nf"
    nfit.save(nf, out)
    assert out.stat().st_size == field_bytes(nf)
    info = nfit.info(out)["coding"]["latents"]
    assert info == ("arm" if arm else "contexts")
    back = load_field(out)
    for k in nf.params:
        assert torch.equal(back.params[k], nf.params[k])  # decoded exactly to what was measured
    for k in back.field.latent_names:
        assert torch.equal(back.params[k], back.params[k].round())
    big = nfit.render(back, width=256, height=192)  # any size: the latents are interpolated
    assert big.shape == (192, 256, 3) and torch.isfinite(torch.as_tensor(big)).all()


def test_network_precision_is_the_cheapest_at_the_fits_lambda():
    """The MLP's and mixing's bits: the stored file's loss MSE + lambda * bits / samples is no lower one bit
    either side of the choice; a large lambda buys fewer bits, a fit without lambda keeps LATENT_NET_BITS."""
    from nfit.config import LATENT_NET_BITS, LATENT_NET_MIN_BITS, StoreConfig
    from nfit.rate import measure, store_latents

    fitted = nfit.fit(PHOTO, field="grid", steps=60, seed=1)  # its latents already integers
    values, cpu = torch.from_numpy(read_signal(PHOTO).values), torch.device("cpu")

    def network_bits(lam: float | None) -> int:
        q = store_latents(dataclasses.replace(fitted, summary={"lambda": lam}), values, StoreConfig(), cpu).quantised.q
        return max(int(q[k].abs().max()) for k in q if k not in fitted.field.latent_names).bit_length() + 1

    def loss(bits: int) -> float:
        stored = _store_at(fitted, bits)
        mse = 10 ** (-measure(stored, values, cpu, ssim=False)[0] / 10)
        return mse + fitted.summary["lambda"] * 8 * field_bytes(stored) / values[..., 0].numel()

    chosen = network_bits(fitted.summary["lambda"])
    assert LATENT_NET_MIN_BITS <= chosen <= LATENT_NET_BITS
    for other in (chosen - 1, chosen + 1):
        if LATENT_NET_MIN_BITS <= other <= LATENT_NET_BITS:
            assert loss(chosen) <= loss(other)
    assert network_bits(None) == LATENT_NET_BITS
    assert network_bits(1.0) == LATENT_NET_MIN_BITS  # bits cost far more than any error here


def _store_at(nf, net_bits: int):
    """``nf``'s latents rounded and its network at ``net_bits``, as store_latents writes them."""
    from nfit.coding import dequantise, quantise, step_for

    names = set(nf.field.latent_names)
    steps = {k: 1.0 if k in names else step_for(v, net_bits) for k, v in nf.params.items()}
    q = quantise(nf.params, None, 12, steps)
    return dataclasses.replace(nf, params=dequantise(q, None), quantised=q)


def test_a_rate_goals_step_size_rises_with_it_and_scales_a_given_one():
    (s0, r0), (s1, r1) = sorted(LATENT_FIT["lr_rates"], key=lambda p: p[1])
    assert s0 < s1
    assert lr_share(r0 / 10) == lr_share(r0) == pytest.approx(s0)  # held beyond the measured points
    assert lr_share(r1 * 10) == lr_share(r1) == pytest.approx(s1)
    assert lr_share(math.sqrt(r0 * r1)) == pytest.approx((s0 + s1) / 2)  # log-linear in the rate
    # 128x96: ~1,360 bytes besides the latents, which get ~0.2 bits per pixel of 1,700 and ~1.7 of 4,000
    assert nfit.fit(PHOTO, field="grid", steps=2, max_bytes=1700).summary["lr"] == pytest.approx(s0 * LATENT_FIT["lr"])
    assert nfit.fit(PHOTO, field="grid", steps=2, max_bytes=1700, lr=0.02).summary["lr"] == pytest.approx(s0 * 0.02)
    assert nfit.fit(PHOTO, field="grid", steps=2, max_bytes=4000).summary["lr"] == pytest.approx(s1 * LATENT_FIT["lr"])
    assert nfit.fit(PHOTO, field="grid", steps=2, target_psnr=30).summary["lr"] == LATENT_FIT["lr"]


def test_a_budget_on_images_and_audio_fits_a_latent_grid_unless_told_otherwise(tmp_path, monkeypatch):
    import nfit.api as api
    from nfit.config import LATENT_BUDGET_BPP, FieldOptions, SignalOptions, StoreConfig, TileConfig

    def latents(files=(PHOTO,), field=None, opts=None, settings=None, **store):
        return api.latents_for_budget(list(files), field, StoreConfig(**store), opts or SignalOptions(),
                                      settings or {})

    pixels = 128 * 96
    assert latents(max_bytes=3000) and latents(bpp=0.3) and latents(field=FieldOptions(), bpp=1)
    assert latents(files=(PHOTO, DATA / "camera_32.png"), bpp=1)
    assert not latents()  # no budget: the default tiles
    assert not latents(bpp=LATENT_BUDGET_BPP) and not latents(max_bytes=int(LATENT_BUDGET_BPP * pixels / 8))
    assert latents(files=(PHOTO, SPEECH), bpp=1) and latents(files=(SPEECH,), max_bytes=7290 * 7 // 8)
    assert not latents(files=(SPEECH,), max_bytes=7290)  # 8 bits per sample: tiles
    # samples as the reader will give them: 7,290 at 8 kHz, resampled or cropped
    assert api._header_samples(SPEECH, "audio", SignalOptions()) == (7290, 1)
    assert api._header_samples(SPEECH, "audio", SignalOptions(sample_rate=16000)) == (14580, 1)
    assert api._header_samples(SPEECH, "audio", SignalOptions(duration=0.5)) == (4000, 1)
    assert not latents(files=(PHOTO, DATA / "video" / "carphone_88x72.mp4"), bpp=1)  # images and audio only
    assert not latents(field=FieldOptions(width=32), bpp=1) and not latents(opts=SignalOptions(res=64), bpp=1)
    for given in ({"init": "default"}, {"init": "random"}, {"tiles": TileConfig(tile=16)},
                  {"tiles": TileConfig(tile=0)}):
        assert not latents(bpp=1, settings=given), given
    monkeypatch.setattr(api, "available_bytes", lambda device: 1 << 20)  # a grid that would not fit in memory
    with pytest.warns(NfitWarning, match="coffee_128x96.png: a latent grid.* would need about .* fitting tiles"):
        assert not latents(bpp=1)
    monkeypatch.undo()
    # through the command line and the library alike
    r = CliRunner().invoke(app, ["fit", str(PHOTO), "-o", str(tmp_path / "a.nf"), "--max-bytes", "3000", "--steps", "2",
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["method"] == "adam-rd" and (tmp_path / "a.nf").stat().st_size <= 3000
    assert nfit.fit(PHOTO, bpp=1.5, steps=2).summary["method"] == "adam-rd"
    assert nfit.fit(SPEECH, bpp=2, steps=2).summary["method"] == "adam-rd"
    assert nfit.fit(PHOTO, bpp=1.5, steps=2, tile=32).summary["method"] != "adam-rd"


def test_budget_is_never_exceeded_and_an_impossible_one_is_refused(tmp_path, monkeypatch):
    nf = nfit.fit(PHOTO, field="grid", steps=40, max_bytes=4000)  # steered toward the budget, then held to it
    assert field_bytes(nf) <= 4000
    nfit.save(nf, tmp_path / "small.nf")
    assert (tmp_path / "small.nf").stat().st_size <= 4000
    # a fit that overshoots its budget (aimed 60% over it): latents nearest the rounding boundary go to zero
    rich = nfit.fit(PHOTO, field="grid", steps=150)
    names = rich.field.latent_names
    empty = dataclasses.replace(rich, params={k: v * 0 if k in names else v for k, v in rich.params.items()})
    rest = field_bytes(_store_at(empty, 12))  # all but its latents
    budget = (field_bytes(rich) + 2 * rest) // 3  # a third of its latents' bytes
    monkeypatch.setitem(LATENT_FIT, "budget_share", 1.6)
    over = nfit.fit(PHOTO, field="grid", steps=150, max_bytes=budget)
    assert field_bytes(over) <= budget
    assert over.summary["psnr"] > 15  # measured: 21.3 dB, where a fit aimed under the budget scores 30.8
    zeros = lambda f: sum(int((f.quantised.q[k] == 0).sum()) for k in f.field.latent_names)  # noqa: E731
    assert zeros(over) > zeros(rich)
    with pytest.raises(ConfigError, match="cannot be stored in 300 bytes"):
        nfit.fit(PHOTO, field="grid", steps=5, max_bytes=300)


def test_bits_and_tiles_do_not_apply_to_latent_grids():
    with pytest.raises(ConfigError, match="--bits"):
        nfit.fit(PHOTO, field="grid", steps=2, bits=6)
    with pytest.raises(ConfigError, match="--tile"):
        nfit.fit(PHOTO, field="grid", steps=2, tile=32)


def test_audio_latent_grid_renders_at_another_rate():
    nf = nfit.fit(SPEECH, field="grid", steps=30)
    assert nf.field_config["in_dim"] == 1 and nf.summary["psnr"] > 20
    assert nfit.render(nf, sample_rate=16000).shape[0] == pytest.approx(2 * nf.shape[0], abs=2)


def test_a_recording_longer_than_any_field_option_round_trips(tmp_path):
    """A grid's size is its signal's: 100,000 samples (2 s at 48 kHz) were written, then refused on
    loading as a field option "out of range" (over 65,536)."""
    t = np.arange(100_000) / 48_000
    path = tmp_path / "tone.wav"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 48_000)
    nf = nfit.fit(path, field="grid", steps=2)
    nfit.save(nf, tmp_path / "tone.nf")
    back = load_field(tmp_path / "tone.nf")
    assert back.shape == (100_000,) and torch.equal(back.params["z0"], nf.params["z0"])


def test_files_fit_together_as_memory_allows_and_a_file_too_big_is_refused(tmp_path, monkeypatch):
    """The whole grid is held at once (~300 bytes per sample and channel): a batch is split to fit the
    free memory, and a file that would not fit alone is one ConfigError, not a process the system kills."""
    two = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(two):
        Image.open(PHOTO).rotate(180 * i).save(path)
    per_file = 300 * 128 * 96 * 3
    monkeypatch.setattr("nfit.api.available_bytes", lambda device: int(1.5 * per_file / 0.7))
    assert [nf.summary["batch"] for nf in nfit.fit(two, field="grid", steps=2)] == [1, 1]
    monkeypatch.setattr("nfit.api.available_bytes", lambda device: int(2.5 * per_file / 0.7))
    assert [nf.summary["batch"] for nf in nfit.fit(two, field="grid", steps=2)] == [2, 2]
    monkeypatch.setattr("nfit.api.available_bytes", lambda device: per_file // 2)
    with pytest.raises(ConfigError, match="96x128 samples needs about .* GiB to fit.*leave out --field grid") as err:
        nfit.fit(PHOTO, field="grid", steps=2)
    assert err.value.where == str(PHOTO)
    # the guard is the latent fit's alone: a whole-signal SIREN fit is not held to it
    assert nfit.fit(two, steps=1, tile=0)[0].field_name == "siren"


def test_cli_fits_a_latent_grid_to_a_bit_rate(tmp_path):
    out = tmp_path / "coffee.nf"
    result = CliRunner().invoke(app, ["fit", str(PHOTO), "-o", str(out), "--field", "grid", "--steps", "60",
                                      "--bpp", "3"])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size <= 3 * 128 * 96 / 8
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "grid" in info.output and "adam-rd" in info.output


def test_video_latent_grid_is_three_dimensional():
    video = DATA / "video" / "carphone_88x72.mp4"
    nf = nfit.fit(video, field="grid", steps=10, options=SignalOptions(frames=3))
    assert nf.field_config["in_dim"] == 3 and nf.shape[0] == 3 and nf.tiling is None
    assert nfit.render(nf).shape == (*nf.shape, 3)


def test_a_video_longer_than_a_clip_fits_its_clips_without_the_latents_model(monkeypatch):
    """Clips of a latent grid are fitted by plain Adam, not for their rate: no autoregressive model (which only
    a rate fit trains) is in their fields, and the file round trips."""
    monkeypatch.setattr("nfit.config.FRAME_CHUNK", 4)  # the test video's 8 frames: clips of 4
    video = DATA / "video" / "carphone_88x72.mp4"
    nf = nfit.fit(video, field="grid", steps=3)
    assert nf.tiling is not None and nf.field.config.arm == 0 and not any(k.startswith("arm.") for k in nf.params)
    assert nfit.render(nf).shape == (*nf.shape, 3)


def test_latent_grids_are_not_initialisations(tmp_path):
    crops = make_crops(tmp_path / "crops")
    result = CliRunner().invoke(app, ["meta-train", str(crops), "-o", str(tmp_path / "run"), "--field", "grid",
                                      "--steps", "1"])
    assert result.exit_code != 0 and "sized by the file it fits" in result.output
    assert not (tmp_path / "run").exists()


def test_a_target_psnr_steers_lambda_both_ways():
    free = nfit.fit(PHOTO, field="grid", steps=150)  # lambda 1e-3: 31.8 dB
    low = nfit.fit(PHOTO, field="grid", steps=150, target_psnr=28)
    assert low.summary["lambda"] > free.summary["lambda"] and low.summary["psnr"] >= 28
    high = nfit.fit(PHOTO, field="grid", steps=150, target_psnr=40)  # out of reach in 150 steps: spend bits
    assert high.summary["lambda"] < free.summary["lambda"] and field_bytes(high) > field_bytes(free)
