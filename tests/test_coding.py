"""Coded .nf files (nfit.coding, nfit.rate): exact round trips, honest sizes, rate control, corrupt payloads."""

from __future__ import annotations

import dataclasses
import math
import struct
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import nfit
from nfit import metrics
from nfit.cli import app
from nfit import coding
from nfit.coding import (CodingError, contexts, decode, dequantise, encode, laplace_scale, levels, quantise, rows,
                         tensor_model)
from nfit.errors import ConfigError, FieldFileError
from nfit.fieldfile import FORMAT_VERSION, field_bytes, load_field, read_field_header, read_metadata
from nfit.rate import coded
from nfit.signals import read_signal

DATA = Path(__file__).parent / "data"
PHOTO = DATA / "coffee_128x96.png"  # a real photo (tests/data/README.md)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 16), sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4), seed=st.integers(0, 99),
       spread=st.floats(0.01, 50.0))
def test_decode_of_encode_is_exact(bits, sizes, seed, spread):
    """Any integers in range, any tensor sizes (empty too), Laplace-like or not: decode(encode(q)) == q."""
    rng = np.random.default_rng(seed)
    top = levels(bits)
    q = {f"t{i}": torch.from_numpy(np.clip(np.round(rng.laplace(0, spread, n)), -top, top).astype(np.int16))
         for i, n in enumerate(sizes)}
    payload, scales = encode(q, bits)
    back = decode(payload, bits, {k: tuple(v.shape) for k, v in q.items()}, scales)
    for k in q:
        assert torch.equal(back[k], q[k])


def _clustered(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Integers mostly zero, non-zero along a few rows and columns (as a photo's edges leave a latent grid)."""
    rng = np.random.default_rng(seed)
    q = np.zeros(shape, dtype=np.int16)
    flat = q.reshape(rows(shape))
    if flat.size:
        flat[:, rng.integers(0, flat.shape[1], 2)] = rng.integers(-6, 7, (flat.shape[0], 2))
        flat[rng.integers(0, flat.shape[0], 2), :] = rng.integers(-6, 7, (2, flat.shape[1]))
    return q


@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (9, 1), (40,), (3, 4, 5), (0, 3), (1,)])
def test_context_coding_round_trips_exactly(shape, monkeypatch):
    """Coded by context whatever it saves (the table made free), in any shape: decode(encode(q)) == q, the
    context-coded tensor between two coded plainly."""
    monkeypatch.setattr(coding, "CONTEXT_TABLE_BITS", -1e12)
    q = torch.from_numpy(_clustered(shape, seed=len(shape)))
    tensors = {"a": q.clone(), "z": q, "b": q.flatten().flip(0).clone()}
    payload, scales = encode(tensors, 12, by_context={"z"})
    assert isinstance(scales["z"], list) == (q.numel() > 0) and not isinstance(scales["a"], list)
    back = decode(payload, 12, {k: tuple(v.shape) for k, v in tensors.items()}, scales)
    for k, v in tensors.items():
        assert torch.equal(back[k], v)


def test_context_coding_is_used_where_it_codes_smaller():
    """Clustered integers code smaller by context, and get it; i.i.d. ones do not, and keep one scale.
    Either way the bits tensor_model counts are within 1% (plus a word) of the bytes written."""
    clustered = torch.from_numpy(_clustered((256, 384), seed=0))
    iid = torch.from_numpy(np.round(np.random.default_rng(0).laplace(0, 0.3, (256, 384))).astype(np.int16))
    for q, by_context in ((clustered, True), (iid, False)):
        plain, _ = encode({"z": q}, 12)
        payload, scales = encode({"z": q}, 12, by_context={"z"})
        assert isinstance(scales["z"], list) == by_context
        assert len(payload) < 0.9 * len(plain) if by_context else len(payload) == len(plain)
        _, counted = tensor_model(q.numpy().reshape(rows(tuple(q.shape))), True)
        spent = counted - (coding.CONTEXT_TABLE_BITS if by_context else 0)
        assert abs(8 * len(payload) - spent) <= 0.01 * spent + 64


def test_contexts_come_from_the_rows_above_only():
    """A row's contexts do not depend on it or on the rows below (a decoder has only the rows above), and do
    depend on the two rows above."""
    q = _clustered((12, 15), seed=3).astype(np.int64)
    base = contexts(q)
    changed = q.copy()
    changed[5] += 4
    after = contexts(changed)
    assert np.array_equal(after[:6], base[:6]) and not np.array_equal(after[6], base[6])
    assert not np.array_equal(after[7], base[7]) and np.array_equal(after[8:], base[8:])


def test_quantisation_error_is_half_a_step_and_relative_to_the_reference():
    torch.manual_seed(0)
    ref = {"w": torch.randn(8, 5), "b": torch.randn(5)}
    params = {k: v[None] + 0.01 * torch.randn(3, *v.shape) for k, v in ref.items()}  # 3 tiles near one init
    for bits in (3, 6, 10):
        q = quantise(params, ref, bits)
        back = dequantise(q, ref)
        for k in params:
            assert q.q[k].abs().max() <= levels(bits)
            assert (back[k] - params[k]).abs().max() <= q.steps[k] / 2 * (1 + 1e-5)
            # the step is set by the difference from the reference, not the weights' own range, and
            # rounded up to 3 significant digits: at most 1% coarser, a short number in the metadata
            exact = float((params[k] - ref[k]).abs().max()) / levels(bits)
            assert exact * (1 - 1e-6) <= q.steps[k] <= exact * 1.01 and len(repr(float(f"{q.steps[k]:.3g}"))) <= 8
            assert q.steps[k] == pytest.approx(float(f"{q.steps[k]:.3g}"), rel=1e-7)
    # re-quantising what a file decodes to at its steps gives back the same integers
    again = quantise(back, ref, 10, q.steps)
    assert all(torch.equal(again.q[k], q.q[k]) for k in q.q)


def test_laplace_coding_costs_what_the_integers_entropy_says():
    """The coder is close to the empirical entropy of Laplace-like integers (a wrong model would cost far more)."""
    rng = np.random.default_rng(1)
    ints = np.clip(np.round(rng.laplace(0, 6, 50_000)), -31, 31).astype(np.int32)
    payload, _ = encode({"w": torch.from_numpy(ints)}, 6)
    _, counts = np.unique(ints, return_counts=True)
    entropy_bytes = -(counts * np.log2(counts / counts.sum())).sum() / 8
    assert entropy_bytes <= len(payload) <= 1.02 * entropy_bytes + 8


@pytest.mark.parametrize("kind", ["laplace", "sparse"])
def test_the_scale_is_the_one_that_codes_smallest(kind, monkeypatch):
    """A latent grid's integers are mostly zeros: mean|q| as the Laplace scale (the maximum-likelihood
    one for continuous values) coded round(Laplace(0.2)) samples in 1.64x their entropy; the chosen
    scale codes them within 2% of it, and in fewer bytes than mean|q| or a scale 20% either side."""
    rng = np.random.default_rng(2)
    if kind == "laplace":
        ints = np.round(rng.laplace(0, 0.2, 100_000)).astype(np.int32)
    else:  # 1% non-zeros of a wide spread: no Laplace fits, the best one still wins
        ints = np.where(rng.random(100_000) < 0.01, np.round(rng.laplace(0, 3, 100_000)), 0).astype(np.int32)
    payload, scales = encode({"z": torch.from_numpy(ints)}, 12)
    assert scales["z"] == laplace_scale(ints)
    if kind == "laplace":
        _, counts = np.unique(ints, return_counts=True)
        assert len(payload) <= 1.02 * -(counts * np.log2(counts / counts.sum())).sum() / 8 + 8
    for other in (float(np.abs(ints).mean()), scales["z"] * 0.8, scales["z"] * 1.25):
        monkeypatch.setattr("nfit.coding.laplace_scale", lambda q, s=other: round(s * 1024) / 1024)
        assert len(payload) <= len(encode({"z": torch.from_numpy(ints)}, 12)[0])


def test_decode_refuses_a_short_payload():
    payload, scales = encode({"w": torch.arange(-3, 4, dtype=torch.int32).repeat(100)}, 4)
    with pytest.raises(CodingError):
        decode(payload[:3], 4, {"w": (700,)}, scales)


@pytest.fixture(scope="module")
def photo():
    return read_signal(PHOTO)


@pytest.fixture(scope="module")
def from_init(photo):
    """The real photo fitted from the shipped tile initialisation, coded (the default)."""
    return nfit.fit(PHOTO, init="default", target_psnr=30.0)


def _psnr(nf, photo) -> float:
    return float(metrics.psnr(nf.render().unsqueeze(0), torch.from_numpy(photo.values).unsqueeze(0))[0])


def test_a_coded_file_decodes_to_exactly_what_the_fit_measured(tmp_path, from_init, photo):
    nf = from_init
    assert nf.quantised is not None and nf.relative_to == "init"
    path = nf.save(tmp_path / "c.nf")
    assert path.stat().st_size == field_bytes(nf)  # sized exactly before writing: what --max-bytes relies on
    back = nfit.load(path)  # the shipped initialisation is found by its hash
    for k in nf.params:
        assert torch.equal(back.params[k], nf.params[k])
        assert torch.equal(back.quantised.q[k], nf.quantised.q[k])
    assert _psnr(back, photo) == pytest.approx(nf.summary["psnr"], abs=1e-3)
    assert nf.summary["psnr"] >= 30.0  # the target, reached by what is stored
    header = read_field_header(path)[1]
    assert header["format_version"] == FORMAT_VERSION and header["storage"]["coding"]["bits"] == nf.quantised.bits


def test_a_coded_file_needs_its_initialisation(tmp_path, from_init):
    path = from_init.save(tmp_path / "c.nf")
    with pytest.raises(FieldFileError, match="difference from an initialisation"):
        load_field(path)  # the library loader is told no initialisation
    info = nfit.info(path)  # info needs none
    assert info["coding"]["relative_to"] == "init" and info["coding"]["bytes"] > 0


def test_at_35_db_a_coded_photo_is_smaller_than_its_samples_and_its_floats(photo, tmp_path):
    """On this 128x96 crop the tiles hold more parameters (46k) than the photo has samples (37k), so it is
    not smaller than its PNG; on 768x512 photos it is (benchmarks/bench_rd.py, BENCHMARKS.md)."""
    nf = nfit.fit(PHOTO, init="default", target_psnr=35.0)
    path = nf.save(tmp_path / "p.nf")
    assert nf.summary["psnr"] >= 35.0
    assert path.stat().st_size < photo.values.size  # the raw 8-bit samples
    floats = dataclasses.replace(nf, quantised=None).save(tmp_path / "f.nf")
    assert path.stat().st_size < floats.stat().st_size / 4


def test_finetuning_codes_better_at_the_same_width_and_zero_steps_is_plain_rounding(photo):
    from nfit.inits import default_init
    from nfit.rate import finetune, measure

    nf = nfit.fit(PHOTO, init="default", steps=2, bits=0)
    ref = default_init("image", 3).params
    values = torch.from_numpy(photo.values)
    cpu = torch.device("cpu")
    plain = coded(nf, ref, 4)
    same = finetune(nf, ref, values, 4, cpu, steps=0)
    assert all(torch.equal(same.quantised.q[k], plain.quantised.q[k]) for k in nf.params)
    tuned = finetune(nf, ref, values, 4, cpu)
    assert tuned.quantised.steps == plain.quantised.steps  # the same grid: only the integers moved
    assert measure(tuned, values, cpu, ssim=False)[0] > measure(plain, values, cpu, ssim=False)[0] + 0.5
    # the fine-tuned values are exactly what its file decodes to
    for k in nf.params:
        assert torch.equal(tuned.params[k], ref[k] + tuned.quantised.q[k].float() * tuned.quantised.steps[k])


def test_float_storage_is_still_there(photo):
    nf = nfit.fit(PHOTO, init="default", steps=2, bits=0)
    assert nf.quantised is None and nf.storage()["coding"] is None


def test_max_bytes_is_never_exceeded_and_uses_the_budget(tmp_path, photo):
    small = nfit.fit(PHOTO, init="default", steps=4, max_bytes=9000)
    large = nfit.fit(PHOTO, init="default", steps=4, max_bytes=30_000)
    for nf, budget in ((small, 9000), (large, 30_000)):
        assert nf.save(tmp_path / "m.nf").stat().st_size <= budget
    assert small.quantised.bits < large.quantised.bits
    assert small.summary["psnr"] < large.summary["psnr"]
    # one bit more would not have fitted
    assert field_bytes(coded(large, None, large.quantised.bits + 1)) > 30_000 or large.quantised.bits == 16
    bpp = nfit.fit(PHOTO, init="default", steps=4, bpp=6.0)
    assert field_bytes(bpp) <= 6.0 * 128 * 96 / 8


@pytest.mark.parametrize("budget", [3000, 4000, 6000])
def test_the_written_file_with_its_summary_keeps_the_budget(tmp_path, budget):
    """The file as written, metadata and the fit's summary included (a tiny field: the header is a large share)."""
    out = tmp_path / "b.nf"
    result = CliRunner().invoke(app, ["fit", str(PHOTO), "-o", str(out), "--init", "random", "--width", "8",
                                      "--steps", "20", "--max-bytes", str(budget)])
    assert result.exit_code == 0, result.output
    assert 0.7 * budget < out.stat().st_size <= budget


def test_an_impossible_budget_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "x.nf"
    result = CliRunner().invoke(app, ["fit", str(PHOTO), "-o", str(out), "--max-bytes", "300", "--steps", "1"])
    assert result.exit_code != 0
    assert "cannot be stored in 300 bytes" in result.output and "Traceback" not in result.output
    assert not out.exists()
    with pytest.raises(ConfigError, match="--bits"):
        nfit.fit(PHOTO, bits=1)
    with pytest.raises(ConfigError, match="leave out --bits"):
        nfit.fit(PHOTO, bits=6, max_bytes=10_000)


def test_whole_signal_and_random_tiles_code_relative_to_zero(tmp_path, photo):
    for kwargs in ({"tile": 0, "width": 16, "depth": 3}, {}):
        nf = nfit.fit(photo, steps=5, bits=8, **kwargs)
        assert nf.relative_to == "zero"
        back = load_field(nf.save(tmp_path / "z.nf"))  # needs nothing else
        assert all(torch.equal(back.params[k], nf.params[k]) for k in nf.params)


def _payload_offset(path: Path) -> tuple[int, int]:
    """Where the payload tensor's bytes lie in a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8:8 + n])["payload"]
    start, stop = entry["data_offsets"]
    return 8 + n + start, 8 + n + stop


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_corrupted_payload_is_refused_in_one_line(tmp_path, from_init, where):
    path = from_init.save(tmp_path / "c.nf")
    start, stop = _payload_offset(path)
    raw = bytearray(path.read_bytes())
    raw[{"first": start, "middle": (start + stop) // 2, "last": stop - 1}[where]] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(FieldFileError, match="coded payload is corrupt"):
        nfit.load(path)
    result = CliRunner().invoke(app, ["render", str(path), "-o", str(tmp_path / "r.png")])
    assert result.exit_code != 0 and "coded payload is corrupt" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.png").exists()


def test_a_truncated_coded_file_is_refused(tmp_path, from_init):
    path = from_init.save(tmp_path / "c.nf")
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(FieldFileError):
        nfit.load(path)


def test_a_sparse_coded_field_round_trips(tmp_path, photo):
    """Meta-SparseINR's fields store only the surviving weights, coded the same way."""
    from nfit.fieldfile import MetaInit
    from nfit.fields import build_field
    from nfit.fit import random_init

    config = {"in_dim": 2, "out_dim": 3, "width": 16, "depth": 3}
    net = build_field("siren", config)
    params = random_init(net, 0)
    mask = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.3
            for k, v in params.items() if k.endswith("weight")}
    params = {k: v * mask[k] if k in mask else v for k, v in params.items()}
    init = MetaInit("siren", config, params, "image", (96, 128), 3, {"name": "sparse", "config": {}},
                    {"steps": 2, "lr": 1e-2, "gamma": 0.25}, sha256="ab" * 32, mask=mask,
                    sparsity={"level": 1, "density": 0.3})
    nf = nfit.fit(photo, init=init, bits=8, steps=2)
    assert nf.relative_to == "init" and nf.mask is not None
    path = nf.save(tmp_path / "s.nf")
    back = load_field(path, init)
    for k in nf.params:
        assert torch.equal(back.params[k], nf.params[k])
        if k in mask:
            assert not back.params[k][~mask[k]].any()  # pruned weights stay exactly zero
    assert math.isclose(nfit.info(path)["values"], nf.n_values)


def test_cli_fit_reports_the_coding_and_info_shows_it(tmp_path):
    out = tmp_path / "c.nf"
    result = CliRunner().invoke(app, ["fit", str(PHOTO), "-o", str(out), "--bits", "6", "--steps", "3", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["bits"] == 6 and row["bytes"] == out.stat().st_size
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "coded: 6-bit" in result.output
    payload = nfit.info(out)["coding"]["bytes"]
    text = " ".join(result.output.split())  # rich wraps long rows
    assert f"{payload:,}-byte payload and {out.stat().st_size - payload:,} bytes of header" in text
    rendered = CliRunner().invoke(app, ["render", str(out), "-o", str(tmp_path / "r.png")])
    assert rendered.exit_code == 0 and (tmp_path / "r.png").exists()


def test_a_time_budget_leaves_out_the_fine_tuning(monkeypatch, photo):
    """--seconds bounds the fit; the coding after it is then rounding alone, not more Adam steps."""
    import nfit.rate

    def no(*args, **kwargs):
        raise AssertionError("fine-tuned under a time budget")

    monkeypatch.setattr(nfit.rate, "finetune", no)
    nf = nfit.fit(PHOTO, init="default", steps=2, bits=5, seconds=60)
    assert nf.quantised.bits == 5
    with pytest.raises(AssertionError, match="fine-tuned"):
        nfit.fit(PHOTO, init="default", steps=2, bits=5)


def _rewrite(path: Path, out: Path, change) -> Path:
    """``path`` with its metadata's storage.coding changed by ``change`` (the payload kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, json.loads(read_metadata(path))
    change(meta["storage"]["coding"])
    save_file(tensors, str(out), metadata={"nfit": json.dumps(meta)})
    return out


@pytest.mark.parametrize("change, reason", [
    (lambda c: c["scales"].__setitem__(0, 1e-300), "corrupt|scale|decodes"),
    (lambda c: c["scales"].__setitem__(0, 1e29), "corrupt|scale|decodes"),
    (lambda c: c["steps"].__setitem__(0, 1e29), "NaN or infinite"),
    (lambda c: c["shapes"].__setitem__("l0.weight", [10 ** 9]), "declares other tensors"),
    (lambda c: c["shapes"].__setitem__("nope", [3]), "declares other tensors"),  # a tensor the field has not
    (lambda c: c.__setitem__("bits", 3), "corrupt|decodes|out of"),
    (lambda c: c.__setitem__("bits", 40), "malformed"),
    (lambda c: c.__setitem__("coder", "zip"), "another coder"),
    (lambda c: c.__setitem__("relative_to", "elsewhere"), "malformed"),
    (lambda c: (c["steps"].pop(), c["scales"].pop()), "declares other tensors"),
    (lambda c: c["steps"].pop(), "malformed"),  # fewer steps than scales
    (lambda c: c.__setitem__("shapes", [[3]]), "malformed"),
    (lambda c: c.pop("steps"), "malformed"),
    (lambda c: c["scales"].__setitem__(0, [0.5] * 3), "malformed"),  # a context table of the wrong length
    (lambda c: c["scales"].__setitem__(0, [0.5] * 7 + [-1.0]), "malformed"),
    (lambda c: c["scales"].__setitem__(0, [0.5] * 8), "corrupt|decodes"),  # a table for plainly coded integers
])
def test_crafted_coding_metadata_is_refused_in_one_line(tmp_path, change, reason):
    path = nfit.fit(PHOTO, steps=2, bits=6, init="random").save(tmp_path / "c.nf")
    bad = _rewrite(path, tmp_path / "bad.nf", change)
    try:
        nf = load_field(bad)
    except FieldFileError as err:
        assert __import__("re").search(reason, str(err)), str(err)
        return
    # a change that still decodes must decode to finite values of the field's shapes (never a crash)
    assert all(torch.isfinite(v).all() for v in nf.params.values())
