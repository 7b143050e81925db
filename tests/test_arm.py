"""The autoregressive model of latents (nfit.arm) and its coding: causal neighbours, a decoding order that
has them, the exact forward against the float one, and exact round trips through the coder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nfit import arm
from nfit.coding import ARM, CodingError, decode, encode, step_for


def _model(hidden: int = 8, levels: int = 3, seed: int = 0, bits: int = 10, spread: float = 0.5):
    """Random float weights (batched [1, ...]), and the integers, steps and Exact model a file would store."""
    g = torch.Generator().manual_seed(seed)
    params = {k: v + spread * torch.randn(v.shape, generator=g) for k, v in arm.init_params(hidden, levels, g).items()}
    steps = {k: step_for(v, bits) for k, v in params.items()}
    ints = {k: torch.round(v / steps[k]).to(torch.int16) for k, v in params.items()}
    stored = {k: ints[k].float() * torch.tensor(steps[k], dtype=torch.float32) for k in params}  # as a file decodes
    exact = arm.Exact.from_ints({k: v.numpy() for k, v in ints.items()}, steps)
    return {k: v[None] for k, v in stored.items()}, ints, steps, exact


def _latents(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.round(rng.laplace(0, 0.7, shape)).astype(np.int16))


def test_neighbours_are_the_causal_ones_zero_beyond_the_edges():
    """Against a plain loop: neighbour k of (r, c) is z[r + dr, c + dc], zero off the grid; never (r, c) itself,
    nothing to its right in its row, nothing below."""
    z = torch.randn(2, 5, 7)
    got = arm.neighbours(z).reshape(2, len(arm.NEIGHBOURS), 5, 7)
    for k, (dr, dc) in enumerate(arm.NEIGHBOURS):
        assert dr < 0 or (dr == 0 and dc < 0)
        for r in range(5):
            for c in range(7):
                inside = 0 <= r + dr < 5 and 0 <= c + dc < 7
                want = z[:, r + dr, c + dc] if inside else torch.zeros(2)
                assert torch.equal(got[:, k, r, c], want)
    assert np.array_equal(arm.context_of(z[0].round().numpy()), arm.neighbours(z[:1].round())[0].T.numpy())


@pytest.mark.parametrize("rows, columns", [(1, 1), (1, 9), (9, 1), (4, 6), (7, 3)])
def test_wavefronts_visit_every_latent_once_after_all_its_neighbours(rows, columns):
    order = arm.order(rows, columns)
    assert sorted(order.tolist()) == list(range(rows * columns))
    when = np.empty(rows * columns, dtype=np.int64)
    when[order] = np.arange(order.size)
    wave = np.empty(rows * columns, dtype=np.int64)
    for t, (r, c) in enumerate(arm.wavefronts(rows, columns)):
        wave[r * columns + c] = t
    for r in range(rows):
        for c in range(columns):
            for dr, dc in arm.NEIGHBOURS:
                if 0 <= r + dr < rows and 0 <= c + dc < columns:  # decoded on an earlier wavefront
                    assert wave[(r + dr) * columns + c + dc] < wave[r * columns + c]
                    assert when[(r + dr) * columns + c + dc] < when[r * columns + c]


def test_exact_forward_is_the_float_one_to_the_coders_rounding():
    """The coder's mean and scale are the float model's (the same stored weights) rounded to 1/16 and to
    1/16 of an octave: within those steps plus the fixed point's."""
    params, _, _, exact = _model()
    z = _latents((1, 20, 30), seed=1).float()
    for level in range(3):
        mean, log_scale = arm.predict(params, z, level)
        e_mean, e_scale = exact.predict(arm.context_of(z[0].numpy()), level)
        assert np.abs(e_mean - mean[0].double().numpy()).max() <= 1 / 32 + 1e-3
        clamped = log_scale[0].double().clamp(math.log(arm.MIN_SCALE), math.log(arm.SCALES[-1])).numpy()
        assert np.abs(np.log(e_scale) - clamped).max() <= math.log(2) / 32 + 0.01


def test_exact_forward_gives_the_same_numbers_in_any_batch():
    """The encoder predicts every latent at once, the decoder a wavefront at a time: bit for bit the same."""
    _, _, _, exact = _model(bits=12)
    context = arm.context_of(_latents((40, 50), seed=2).numpy())
    mean, scale = exact.predict(context, 1)
    for lo, hi in ((0, 1), (3, 17), (100, 1900), (1999, 2000)):
        m, s = exact.predict(context[lo:hi], 1)
        assert np.array_equal(m, mean[lo:hi]) and np.array_equal(s, scale[lo:hi])


def test_bits_against_a_plain_reference():
    """-log2 of the Laplace(mean, scale) mass on each unit bin, floored as the coder floors it."""
    q = torch.tensor([[0.0, 1.0, -3.0, 40.0, 0.3]])
    mean = torch.tensor([[0.0, 0.5, -1.0, 0.0, 0.1]])
    log_scale = torch.log(torch.tensor([[0.5, 1.0, 2.0, 0.1, 0.05]]))

    def cdf(x: float, b: float) -> float:
        return 0.5 * math.exp(x / b) if x < 0 else 1 - 0.5 * math.exp(-x / b)

    want = 0.0
    for x, m, b in zip(q[0].tolist(), mean[0].tolist(), log_scale[0].exp().tolist()):
        want -= math.log2(max(cdf(x - m + 0.5, b) - cdf(x - m - 0.5, b), 2.0**-arm.LEAK_BITS))
    assert arm.bits(q, mean, log_scale).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("shapes", [[(13, 17), (7, 9), (4, 5)], [(1, 30), (1, 15), (1, 8)], [(6, 1), (3, 1), (2, 1)],
                                    [(2, 3, 8), (1, 2, 4), (1, 1, 2)]])
def test_coding_by_the_model_round_trips_exactly_and_costs_what_it_predicts(shapes):
    """Latents of any shape (video grids: 3-D) coded by the model, between tensors coded plainly:
    decode(encode(q)) == q, and the payload is the model's bits (from the float forward) within 2%."""
    _, ints, steps, exact = _model(levels=len(shapes), bits=12)
    latents = {f"z{i}": _latents(s, seed=i) for i, s in enumerate(shapes)}
    tensors = {**ints, "w": torch.arange(-5, 6, dtype=torch.int16), **latents}
    payload, scales = encode(tensors, 12, arm=(exact, list(latents)))
    assert all(scales[k] == ARM for k in latents) and scales["w"] != ARM
    back = decode(payload, 12, {k: tuple(v.shape) for k, v in tensors.items()}, scales, steps)
    for k, v in tensors.items():
        assert torch.equal(back[k], v), k
    plain, _ = encode({k: v for k, v in tensors.items() if k not in latents}, 12)
    model_bits = 0.0
    for level, z in enumerate(latents.values()):
        c = z.reshape(-1, z.shape[-1]).numpy()
        mean, scale = exact.predict(arm.context_of(c), level)
        model_bits += arm.bits(torch.from_numpy(c.reshape(1, -1)).double(), torch.from_numpy(mean)[None],
                               torch.from_numpy(np.log(scale))[None]).item()
    assert abs(8 * (len(payload) - len(plain)) - model_bits) <= 0.02 * model_bits + 96


def test_coding_by_the_model_needs_its_weights_first_and_refuses_a_broken_payload():
    _, ints, steps, exact = _model(levels=1)
    latents = {"z0": _latents((20, 20), seed=5)}
    tensors = {**ints, **latents}
    payload, scales = encode(tensors, 12, arm=(exact, ["z0"]))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    with pytest.raises(CodingError, match="before its weights"):
        decode(payload, 12, {"z0": shapes["z0"], **{k: shapes[k] for k in ints}}, scales, steps)
    with pytest.raises(CodingError, match="other shapes"):
        decode(payload, 12, {**shapes, "arm.1.bias": (3,)}, scales, steps)
    with pytest.raises(CodingError, match="levels"):
        decode(payload, 12, {**shapes, "z1": (2, 2)}, {**scales, "z1": ARM}, steps)
    with pytest.raises(CodingError, match="whole 32-bit words"):  # a truncated file is refused by its CRC-32 first
        decode(payload[:-1], 12, shapes, scales, steps)


def test_predict_is_the_plain_forward_with_its_gradients():
    """The model run once for all-zero contexts and once for each other latent is the plain forward over
    every latent, in values and in the weights' gradients; batched signals are each alone."""
    g = torch.Generator().manual_seed(3)
    params = {k: torch.stack([v + 0.3 * torch.randn(v.shape, generator=g) for _ in range(2)]).requires_grad_(True)
              for k, v in arm.init_params(8, 2, g).items()}
    z = _latents((2, 9, 11), seed=4).float() * (torch.rand(2, 9, 11, generator=g) < 0.1)  # sparse, as fitted
    mean, log_scale = arm.predict(params, z, 1)
    h = arm.neighbours(z)
    for i in range(arm.LAYERS):
        bias = params[f"arm.{i}.bias"][:, 1] if i == 0 else params[f"arm.{i}.bias"]
        h = torch.baddbmm(bias.unsqueeze(2), params[f"arm.{i}.weight"], h)
        h = torch.relu(h) if i < arm.LAYERS - 1 else h
    assert torch.allclose(mean, h[:, 0], atol=1e-6) and torch.allclose(log_scale, h[:, 1], atol=1e-6)
    got = torch.autograd.grad((mean * 1.3 + log_scale.sin()).sum(), list(params.values()))
    want = torch.autograd.grad((h[:, 0] * 1.3 + h[:, 1].sin()).sum(), list(params.values()))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    import nfit

    photo = __import__("pathlib").Path(__file__).parent / "data" / "coffee_128x96.png"
    return nfit.fit(photo, field="grid", steps=20).save(tmp_path_factory.mktemp("arm") / "g.nf")


@pytest.mark.parametrize("change, reason", [
    (lambda c, at: c["steps"].__setitem__(at["arm.0.weight"], 1e29), "corrupt"),  # a model that predicts nonsense
    (lambda c, at: c["steps"].__setitem__(at["arm.2.bias"], 1e-30), "corrupt"),
    (lambda c, at: c["scales"].__setitem__(at["l0.weight"], "arm"), "before its weights"),
    (lambda c, at: c["shapes"].__setitem__("arm.1.bias", [9]), "other tensors"),
    (lambda c, at: c["shapes"].__setitem__("arm.0.bias", [8, 7]), "other shapes"),
])
def test_a_crafted_model_in_a_file_is_refused_in_one_line(grid_file, tmp_path, change, reason):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from nfit.errors import FieldFileError
    from nfit.fieldfile import coded_order, load_field, read_metadata

    with safe_open(str(grid_file), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(read_metadata(grid_file))
    coding = meta["storage"]["coding"]  # format 7: steps and scales in payload order, the field's names
    change(coding, {name: i for i, name in enumerate(coded_order(load_field(grid_file).field))})
    save_file(tensors, str(tmp_path / "bad.nf"), metadata={"nfit": json.dumps(meta)})
    try:
        nf = load_field(tmp_path / "bad.nf")
    except FieldFileError as err:
        assert reason in str(err), str(err)
        return
    # a model that predicts nonsense may still decode (into other integers): never a crash, never a non-finite value
    assert reason == "corrupt" and all(torch.isfinite(v).all() for v in nf.params.values())
