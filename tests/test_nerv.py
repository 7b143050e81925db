"""The NeRV video field: a plain per-signal reference, frame units and GradNCP's frame score."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from nfit.errors import ConfigError
from nfit.fields import NeRV, build_field, count_params, stack_params
from nfit.meta.inner import full_pass
from nfit.signals.grid import grid_coords

TINY = {
    "frame_height": 8,
    "frame_width": 12,
    "out_dim": 3,
    "strides": [2, 2],
    "channels": [6, 5],
    "base_channels": 4,
    "pe_levels": 6,
    "mlp_width": 16,
    "mlp_depth": 2,
}


def _field(**overrides) -> NeRV:
    return build_field("nerv", TINY | overrides)


def _batch(field, b=3, seed=0):
    params = stack_params([field.init_params(torch.Generator().manual_seed(seed + i)) for i in range(b)])
    return {k: v.double() for k, v in params.items()}


def reference(config, p, t):
    """One signal, written out plainly: p unbatched, t [n] -> frames [n, H*W*C], head input [n, Cin*H*W]."""
    pe = []
    for i in range(config.pe_levels):
        arg = t * (config.pe_base**i * math.pi)
        pe += [torch.sin(arg), torch.cos(arg)]
    x = torch.stack(pe, dim=1)  # [n, 2L]
    for i in range(config.mlp_depth):
        x = F.gelu(x @ p[f"l{i}.weight"].T + p[f"l{i}.bias"])
    scale = math.prod(config.strides)
    x = x.view(len(t), config.base_channels, config.frame_height // scale, config.frame_width // scale)
    for i, r in enumerate(config.strides):
        x = F.gelu(F.pixel_shuffle(F.conv2d(x, p[f"c{i}.weight"], p[f"c{i}.bias"], padding=1), r))
    y = F.conv2d(x, p["head.weight"], p["head.bias"]) + config.out_offset  # [n, C, H, W]
    return y.permute(0, 2, 3, 1).reshape(len(t), -1), x.reshape(len(t), -1)


def test_shapes_and_parameter_counts():
    assert count_params(build_field("nerv", {})) == 706_915  # the defaults, 128x128x3
    # the GradNCP reference's 128x128 NeRV ("small"): same structure, wider
    assert count_params(build_field("nerv", {"mlp_width": 512, "channels": [128, 64, 32, 32]})) == 1_302_115
    field = _field()
    shapes = field.param_shapes()
    assert shapes == {
        "l0.weight": (16, 12), "l0.bias": (16,),
        "l1.weight": (4 * 2 * 3, 16), "l1.bias": (24,),  # base map 4 x (8/4) x (12/4)
        "c0.weight": (6 * 4, 4, 3, 3), "c0.bias": (24,),
        "c1.weight": (5 * 4, 6, 3, 3), "c1.bias": (20,),
        "head.weight": (3, 5, 1, 1), "head.bias": (3,),
    }  # fmt: skip
    assert count_params(field) == 12 * 16 + 16 + 16 * 24 + 24 + 24 * 36 + 24 + 20 * 54 + 20 + 15 + 3
    params = _batch(field, b=2)
    out, feats = field(params, torch.rand(7, 1, dtype=torch.float64), features=True)
    assert out.shape == (2, 7, 8 * 12 * 3) and feats.shape == (2, 7, 5 * 8 * 12)
    zero = {k: torch.zeros_like(v) for k, v in params.items()}
    assert torch.equal(
        field(zero, torch.rand(4, 1, dtype=torch.float64)), torch.full((2, 4, 288), 0.5, dtype=torch.float64)
    )


def test_init_is_pytorch_default_and_seeded():
    field = _field()
    p = field.init_params(torch.Generator().manual_seed(1))
    for name, shape in field.param_shapes().items():
        weight = name.replace(".bias", ".weight")
        bound = 1 / math.sqrt(math.prod(field.param_shapes()[weight][1:]))
        assert p[name].shape == shape and p[name].dtype == torch.float32
        assert p[name].abs().max() <= bound and p[name].abs().max() > 0.5 * bound
    again = field.init_params(torch.Generator().manual_seed(1))
    assert all(torch.equal(p[k], again[k]) for k in p)


def test_config_round_trips_through_json():
    field = _field(pe_base=1.5, out_offset=0.25)
    text = json.dumps(dataclasses.asdict(field.config))
    again = build_field("nerv", json.loads(text))
    assert again.config == field.config and again.config.strides == (2, 2) and again.config.channels == (6, 5)
    params = _batch(field)
    t = torch.rand(3, 1, dtype=torch.float64)
    torch.testing.assert_close(again(params, t), field(params, t))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"strides": [2, 4]}, "divide"),  # 12 columns are not divisible by 8
        ({"channels": [6]}, "one entry per block"),
        ({"strides": [], "channels": []}, "at least one block"),
        ({"frame_height": 0}, "frame_height"),
        ({"channels": [6, -1]}, "channels"),
        ({"strides": 2}, "list"),
        ({"mlp_depth": 0}, "mlp_depth"),
        ({"strides": [2.0, 2]}, "stride"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_field("nerv", TINY | bad)


@pytest.mark.parametrize("per_signal", [False, True])
def test_batched_matches_plain_per_signal_reference(per_signal):
    field = _field()
    params = _batch(field)
    gen = torch.Generator().manual_seed(5)
    n = 4
    coords = torch.rand(3, n, 1, generator=gen, dtype=torch.float64) * 2 - 1  # a different frame set per signal
    if not per_signal:
        coords = coords[0]
    targets = torch.rand(3, n, 8 * 12 * 3, generator=gen, dtype=torch.float64)
    batched = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out, feats = field(batched, coords, features=True)
    grads = torch.autograd.grad((out - targets).pow(2).mean(dim=(1, 2)).sum(), list(batched.values()))
    for b in range(3):
        single = {k: v[b].clone().requires_grad_(True) for k, v in params.items()}
        t = coords[b, :, 0] if per_signal else coords[:, 0]
        o, f = reference(field.config, single, t)
        torch.testing.assert_close(out[b], o)
        torch.testing.assert_close(feats[b], f)
        g1 = torch.autograd.grad((o - targets[b]).pow(2).mean(), list(single.values()))
        for name, g, gb in zip(batched, grads, g1):
            torch.testing.assert_close(g[b], gb, msg=name)
    assert not torch.allclose(out[0], out[1])  # the signals really differ


def test_unit_scores_are_the_head_gradient_norm_per_frame():
    field = _field()
    params = {k: v.clone().requires_grad_(True) for k, v in _batch(field, b=2).items()}
    coords = torch.rand(2, 3, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    targets = torch.rand(2, 3, 8 * 12 * 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out, feats = field(params, coords, features=True)
    err = out - targets
    scores = field.unit_scores(err.detach(), feats.detach())
    assert scores.shape == (2, 3)
    head = [params["head.weight"], params["head.bias"]]
    for b in range(2):
        for j in range(3):
            gw, gb = torch.autograd.grad(0.5 * err[b, j].pow(2).sum(), head, retain_graph=True)
            expected = torch.sqrt(gw[b].pow(2).sum() + gb[b].pow(2).sum())
            torch.testing.assert_close(scores[b, j], expected)
    assert (scores.max() - scores.min()) > 1e-3 * scores.max()  # frames are told apart


def test_units_round_trip_and_resize():
    field = _field()
    shape = (5, 8, 12)
    assert field.unit_count(shape) == 5 and field.unit_size(shape) == 96
    torch.testing.assert_close(field.unit_coords(shape), grid_coords((5,)))
    torch.testing.assert_close(field.unit_coords(shape, 1, 3), grid_coords((5,))[1:3])
    values = torch.rand(2, 5, 8, 12, 3)
    units = field.to_units(values)
    assert units.shape == (2, 5, 288)
    # the flat grid of (T, H, W): sample (t, y, x) of frame units[:, t] is values[:, t, y, x]
    back = field.from_units(units, shape)
    assert torch.equal(back, values.reshape(2, 5 * 8 * 12, 3))
    with pytest.raises(ConfigError, match="8x12 frames"):
        field.to_units(torch.rand(1, 5, 8, 10, 3))
    with pytest.raises(ConfigError, match="8x12 frames"):
        field.to_units(torch.rand(1, 5, 8, 12, 1))

    # at twice the size a frame linear in x and y comes back exact inside the border cells,
    # in pixel-centre coordinates: the new sample (y, x) sits at ((y + 0.5) / 2 - 0.5, ...) old pixels
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij")
    ramp = torch.stack([yy, xx, 0.3 * yy - 0.7 * xx], dim=-1)  # [8, 12, 3]
    frames = ramp.expand(1, 2, 8, 12, 3) + torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)
    big = field.from_units(field.to_units(frames), (2, 16, 24)).view(1, 2, 16, 24, 3)
    ny, nx = torch.meshgrid((torch.arange(16.0) + 0.5) / 2 - 0.5, (torch.arange(24.0) + 0.5) / 2 - 0.5, indexing="ij")
    exact = torch.stack([ny, nx, 0.3 * ny - 0.7 * nx], dim=-1)
    inner = (slice(1, -1), slice(1, -1))
    torch.testing.assert_close(big[0, 0][inner], exact[inner])
    torch.testing.assert_close(big[0, 1][inner], exact[inner] + 1)
    # shrinking is antialiased: one lit column in four, shrunk 4x, averages to 1/4 (a plain
    # bilinear sample would fall between two dark columns and give 0)
    stripes = (xx % 4 == 0).float().unsqueeze(-1).expand(8, 12, 3).reshape(1, 1, 8, 12, 3)
    small = field.from_units(field.to_units(stripes), (1, 2, 3)).view(1, 1, 2, 3, 3)
    torch.testing.assert_close(small[..., 1, :], torch.full((1, 1, 2, 3), 0.25))  # the column away from the borders


def _moving_pattern(t=8, h=16, w=16):
    """A smooth colour pattern drifting right: values in [0.1, 0.9], [1, T, H, W, 3]."""
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    phase = 2 * math.pi * (xx - 1.0 * tt) / w
    r = 0.5 + 0.4 * torch.sin(phase)
    g = 0.5 + 0.4 * torch.cos(phase + 2 * math.pi * yy / h)
    b = 0.5 + 0.2 * torch.sin(phase) * torch.cos(2 * math.pi * yy / h)
    return torch.stack([r, g, b], dim=-1).unsqueeze(0).float()


def test_adam_learns_a_moving_pattern():
    field = build_field(
        "nerv", {"frame_height": 16, "frame_width": 16, "strides": [2, 2], "channels": [16, 16],
                 "base_channels": 16, "pe_levels": 8, "mlp_width": 64}
    )  # fmt: skip
    shape = (8, 16, 16)
    targets = field.to_units(_moving_pattern(*shape))  # [1, 8, 768]
    coords = field.unit_coords(shape)
    params = {
        k: v.unsqueeze(0).requires_grad_(True) for k, v in field.init_params(torch.Generator().manual_seed(0)).items()
    }
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = (field(params, coords) - targets).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::5]  # about 0.04-0.06 of it over seeds 0-2


def test_full_pass_over_frames():
    field = _field()
    shape = (5, 8, 12)
    params = {k: v.clone().requires_grad_(True) for k, v in _batch(field, b=2).items()}
    values = torch.rand(2, *shape, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    coords = field.unit_coords(shape).double()  # [5, 1]
    targets = field.to_units(values)
    # chunk 4 over a batch of 2: two frames a chunk, three chunks
    grads, mse, mse_clamped, _ = full_pass(field, params, coords, targets, chunk=4)
    pred = field(params, coords)
    plain = (pred - targets).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(mse, plain.detach())
    torch.testing.assert_close(
        plain, (field.from_units(pred, shape) - values.reshape(2, -1, 3)).pow(2).mean(dim=(1, 2))
    )
    torch.testing.assert_close(mse_clamped, (pred.clamp(0, 1) - targets).pow(2).mean(dim=(1, 2)).detach())
    expected = torch.autograd.grad(plain.sum(), list(params.values()))
    for name, g, e in zip(params, grads, expected):
        torch.testing.assert_close(g, e, msg=name)


def test_checkpointed_outer_loss_over_frames():
    """--gradient-checkpointing recomputes NeRV frames piece by piece: same loss, same meta-gradient."""
    from nfit.meta import build_strategy

    field = _field()
    shape = (6, 8, 12)
    theta = {k: v[0].clone() for k, v in _batch(field, b=1).items()}
    values = torch.rand(2, *shape, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    coords, targets = field.unit_coords(shape).double(), field.to_units(values)
    results = []
    for checkpoint in (False, True):
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        strategy = build_strategy("gradncp", {"inner_steps": 2, "gamma": 0.5, "boot_steps": 1, "chunk": 4,
                                              "gradient_checkpointing": checkpoint})
        r = strategy.outer_loss(field, th, coords, targets)
        r.loss.backward()
        results.append((r.loss.detach(), {k: v.grad for k, v in th.items()}))
    torch.testing.assert_close(results[1][0], results[0][0])
    for name in theta:
        torch.testing.assert_close(results[1][1][name], results[0][1][name], msg=name)
