"""Fitting: quality on a real photo, batched equals one-by-one, chunked equals whole."""

import numpy as np
import pytest
import torch

import nfit
from nfit.config import FitConfig
from nfit.fields import batch_params, build_field
from nfit.fit import fit_adam, random_init
from nfit.meta.inner import full_pass
from nfit.signals import Signal, grid_coords

SMALL = {"width": 64, "depth": 4}


def test_fits_a_real_photo(photo):
    nf = nfit.fit(photo, steps=150, lr=1e-3, device="cpu", **SMALL)
    assert nf.summary["psnr"] > 30.0, nf.summary
    assert nf.summary["ssim"] > 0.9
    # the summary is the truth: re-measure from a native render
    target = torch.from_numpy(nfit.read_signal(photo).values)
    err = (nf.render() - target).pow(2).mean()
    assert abs(-10 * torch.log10(err).item() - nf.summary["psnr"]) < 1e-3


def test_batched_fit_equals_fitting_one_by_one(photo, data_dir):
    a = nfit.read_signal(photo)
    b = Signal("image", a.values[::-1, ::-1].copy(), 8, photo)  # same shape, different content
    together = nfit.fit([a, b], steps=15, device="cpu", **SMALL)
    alone = [nfit.fit(s, steps=15, device="cpu", **SMALL) for s in (a, b)]
    for t, s in zip(together, alone):
        for k in t.params:
            torch.testing.assert_close(t.params[k], s.params[k], rtol=1e-4, atol=1e-5)


def test_files_of_different_shapes_fit_in_one_call(photo, data_dir):
    fitted = nfit.fit([photo, data_dir / "camera_32.png", photo], steps=3, device="cpu", tile=0, **SMALL)
    assert [f.shape for f in fitted] == [(32, 48), (32, 32), (32, 48)]
    assert [f.channels for f in fitted] == [3, 1, 3]
    assert fitted[0].summary["batch"] == 2


def test_chunked_gradient_equals_whole_grid():
    field = build_field("siren", {"width": 16, "depth": 3})
    shape = (9, 11)
    coords = grid_coords(shape)
    targets = torch.rand(2, 99, 3)
    grads = []
    for chunk in (10_000, 2 * 7):  # one pass; chunks of 7 coordinates per signal
        params = {k: v.requires_grad_(True) for k, v in batch_params(random_init(field, 0), 2).items()}
        g, mse, _, _ = full_pass(field, params, coords, targets, chunk)
        grads.append((mse, g))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-6)


def test_target_psnr_freezes_each_signal_where_it_got_there(photo):
    field = build_field("siren", {"width": 32, "depth": 3})
    values = nfit.read_signal(photo).values.reshape(1, -1, 3)
    easy = np.full_like(values, 0.5)  # the init's output is already close: done at once
    targets = torch.from_numpy(np.concatenate([easy, values]))
    res = fit_adam(field, random_init(field, 0), targets, (32, 48), FitConfig(steps=30, target_psnr=25.0))
    assert res.steps[0] < res.steps[1]
    # the frozen signal kept the parameters of the step that reached the target
    again = fit_adam(field, random_init(field, 0), targets[:1], (32, 48), FitConfig(steps=res.steps[0]))
    for k in res.params:
        torch.testing.assert_close(res.params[k][0], again.params[k][0], rtol=1e-4, atol=1e-6)


def test_same_seed_same_result(photo):
    a = nfit.fit(photo, steps=5, seed=3, device="cpu", **SMALL)
    b = nfit.fit(photo, steps=5, seed=3, device="cpu", **SMALL)
    c = nfit.fit(photo, steps=5, seed=4, device="cpu", **SMALL)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert not torch.equal(a.params["l0.weight"], c.params["l0.weight"])


def test_fourier_field_fits(photo):
    nf = nfit.fit(photo, field="fourier", steps=60, device="cpu", width=64, depth=3)
    assert nf.field_name == "fourier" and nf.summary["psnr"] > 20


def test_bad_options():
    with pytest.raises(nfit.ConfigError, match="--steps"):
        FitConfig(steps=-1)
    with pytest.raises(nfit.ConfigError, match="w0"):
        nfit.fit(Signal("image", np.zeros((4, 4, 1), np.float32), 8, __file__), field="fourier", w0=3.0, steps=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu(photo):
    cpu = nfit.fit(photo, steps=10, device="cpu", **SMALL)
    gpu = nfit.fit(photo, steps=10, device="cuda", **SMALL)
    assert abs(cpu.summary["psnr"] - gpu.summary["psnr"]) < 0.5


def test_keeps_the_best_parameters_not_the_last(photo):
    from nfit.metrics import psnr
    from nfit.render import decode

    field = build_field("siren", {"width": 32, "depth": 3})
    targets = torch.from_numpy(nfit.read_signal(photo).values.reshape(1, -1, 3))
    seen = []
    # lr far too high: the loss jumps around, so the last iterate is rarely the best one
    res = fit_adam(field, random_init(field, 0), targets, (32, 48), FitConfig(steps=25, lr=0.3),
                   on_step=lambda info: seen.append(info.psnr))
    kept = psnr(decode(field, res.params, (32, 48)), targets).item()
    assert kept >= max(seen) - 1e-3
    assert res.steps[0] < 25  # this lr diverges: the kept parameters are early ones
    assert abs(kept - seen[res.steps[0]]) < 1e-3  # seen[t] is the PSNR of the parameters after t updates


@pytest.mark.parametrize("pooled", [False, True])
def test_sgd_and_adam_report_the_same_psnr_for_the_tiles_of_one_signal(pooled):
    """Tiles of one signal: both phases of a fit from an initialisation report the PSNR of the tiles'
    mean MSE (the signal's), not the mean of their PSNRs, which a flat tile inflates."""
    from nfit.config import AdaptConfig
    from nfit.fit import fit_sgd

    field = build_field("siren", {"in_dim": 1, "out_dim": 1, "width": 8, "depth": 2})
    g = torch.Generator().manual_seed(0)
    targets = torch.stack([torch.full((16, 1), 0.5), torch.rand(16, 1, generator=g)])  # a flat tile, a busy one
    seen = {"sgd": [], "adam": []}
    sgd = fit_sgd(field, random_init(field, 0), targets, (16,), AdaptConfig(steps=2), seen["sgd"].append, pooled=pooled)
    adam = fit_adam(field, sgd.params, targets, (16,), FitConfig(steps=2), seen["adam"].append, batched=True,
                    pooled=pooled)
    # fit_sgd reports each step's result; fit_adam the iterate each step starts from
    for phase, psnr in (("sgd", sgd.psnr[-1]), ("adam", adam.psnr[-2])):
        mse = torch.pow(10.0, -psnr.double() / 10)
        want = float(-10 * torch.log10(mse.mean())) if pooled else float(psnr.mean())
        assert seen[phase][-1].psnr == pytest.approx(want, abs=1e-3), phase
