"""The batched engine against a plain per-signal loop, and the SIREN facts from DESIGN.md."""

import math

import pytest
import torch

from nfit.errors import ConfigError
from nfit.fields import FIELDS, batch_params, build_field, count_params, stack_params, unbatch_params

CONFIGS = {
    "siren": {"in_dim": 2, "out_dim": 3, "width": 16, "depth": 4},
    "fourier": {"in_dim": 2, "out_dim": 3, "width": 16, "depth": 3, "n_freqs": 8},
}


FRAME_FIELDS = {"nerv"}  # fields whose unit is a frame: covered by tests/test_nerv.py
SIZED_FIELDS = {"grid"}  # fields sized by their signal (latent grids): covered by tests/test_latent.py


def test_every_field_is_covered():
    assert set(CONFIGS) | FRAME_FIELDS | SIZED_FIELDS == set(FIELDS)


def _batch(name, b=3, seed=0):
    field = build_field(name, CONFIGS[name])
    params = stack_params([field.init_params(torch.Generator().manual_seed(seed + i)) for i in range(b)])
    return field, {k: v.double() for k, v in params.items()}


def test_siren_reference_size():
    assert count_params(build_field("siren", {})) == 198_915  # GradNCP's image SIREN


def test_siren_init_bounds():
    field = build_field("siren", {"width": 64, "w0": 30.0})
    p = field.init_params(torch.Generator().manual_seed(0))
    assert p["l0.weight"].abs().max() <= 1 / 2 and p["l0.bias"].abs().max() <= 1 / 2
    bound = math.sqrt(6 / 64) / 30
    for i in (1, 2, 3, 4):
        assert p[f"l{i}.weight"].abs().max() <= bound
        assert p[f"l{i}.weight"].abs().max() > 0.9 * bound  # spans the range, not a narrower one
    assert torch.equal(p["l0.weight"], field.init_params(torch.Generator().manual_seed(0))["l0.weight"])


def test_siren_output_offset_predicts_mid_grey_at_zero():
    field = build_field("siren", {"width": 8})
    zero = {k: torch.zeros(1, *v.shape) for k, v in field.init_params(torch.Generator()).items()}
    assert torch.allclose(field(zero, torch.rand(5, 2)), torch.full((1, 5, 3), 0.5))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_forward_matches_loop(name):
    field, params = _batch(name)
    coords = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    out, feats = field(params, coords, features=True)
    assert out.shape == (3, 50, 3) and feats.shape == (3, 50, 16)
    for i in range(3):
        single = {k: v.unsqueeze(0) for k, v in unbatch_params(params, i).items()}
        o, f = field(single, coords, features=True)
        torch.testing.assert_close(out[i], o[0])
        torch.testing.assert_close(feats[i], f[0])
    # per-signal coordinates give the same result as shared ones
    torch.testing.assert_close(field(params, coords.expand(3, 50, 2)), out)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_features_are_the_input_of_the_last_layer(name):
    field, params = _batch(name)
    coords = torch.rand(20, 2, dtype=torch.float64)
    out, feats = field(params, coords, features=True)
    last = len(field.param_shapes()) // 2 - 1
    w, b = params[f"l{last}.weight"], params[f"l{last}.bias"]
    torch.testing.assert_close(out, feats @ w.transpose(1, 2) + b[:, None] + field.config.out_offset)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_per_signal_gradients_match_loop(name):
    field, params = _batch(name)
    coords = torch.rand(40, 2, dtype=torch.float64)
    targets = torch.rand(3, 40, 3, dtype=torch.float64)
    batched = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    loss = (field(batched, coords) - targets).pow(2).mean(dim=(1, 2)).sum()
    grads = torch.autograd.grad(loss, list(batched.values()))
    for i in range(3):
        single = {k: v[i : i + 1].clone().requires_grad_(True) for k, v in params.items()}
        li = (field(single, coords) - targets[i : i + 1]).pow(2).mean()
        gi = torch.autograd.grad(li, list(single.values()))
        for g, g1 in zip(grads, gi):
            torch.testing.assert_close(g[i], g1[0])


def test_batch_params_copies():
    field = build_field("siren", CONFIGS["siren"])
    init = field.init_params(torch.Generator().manual_seed(0))
    batch = batch_params(init, 2)
    batch["l0.weight"][0].zero_()
    assert not torch.equal(batch["l0.weight"][0], batch["l0.weight"][1])
    assert torch.equal(batch["l0.weight"][1], init["l0.weight"])


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown field"):
        build_field("nope", {})
    with pytest.raises(ConfigError, match="no option"):
        build_field("siren", {"colour": 3})
    with pytest.raises(ConfigError, match="depth"):
        build_field("siren", {"depth": 1})


def test_fourier_features_are_fixed_by_seed():
    a = build_field("fourier", {"feature_seed": 3})
    b = build_field("fourier", {"feature_seed": 3})
    c = build_field("fourier", {"feature_seed": 4})
    assert torch.equal(a.freqs, b.freqs) and not torch.equal(a.freqs, c.freqs)
