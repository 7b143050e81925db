"""Init files (learned initialisations): exact round trips, the SHA-256 that fitted files
record, run directories standing for their result, and refusal of every kind of bad file."""

import hashlib
import json

import pytest
import torch
from corpus import rewrite
from safetensors import safe_open
from safetensors.torch import save_file

from nfit.errors import FieldFileError
from nfit.fieldfile import META_KEY, MetaInit, NeuralField, save_field, save_init
from nfit.fields import build_field
from nfit.runs import load_init
from nfit.signals import CONVENTION, grid_coords

CFG = {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3}


def _init(cfg=CFG, shape=(12, 10), seed=0, dtype=torch.float32):
    params = build_field("siren", cfg).init_params(torch.Generator().manual_seed(seed))
    params = {k: v.to(dtype) for k, v in params.items()}
    return MetaInit(
        field_name="siren",
        field_config=dict(cfg),
        params=params,
        modality="image",
        shape=shape,
        channels=cfg["out_dim"],
        algo={"name": "gradncp", "config": {"inner_steps": 16, "gamma": 0.25, "lam": 100.0}},
        test={"steps": 16, "lr": 0.01, "gamma": 0.25},
        data={"files": 7, "bad": 0},
        train={"steps": 3, "val_psnr": 21.5, "seed": 0},
        coords=dict(CONVENTION),
    )


def _meta_of(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[META_KEY])


def test_round_trip_is_bit_exact(tmp_path):
    init = _init()
    path = tmp_path / "init.safetensors"
    sha = save_init(init, path)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["init.safetensors"]  # no temporary left behind

    back = load_init(path)
    assert back.sha256 == sha
    assert back.params.keys() == init.params.keys()
    for k, v in init.params.items():
        assert back.params[k].dtype == torch.float32 and torch.equal(back.params[k], v), k
    assert back.field_name == "siren" and back.field_config == CFG
    assert back.modality == "image" and back.shape == (12, 10) and back.channels == 3
    assert back.algo == init.algo and back.test == init.test
    assert back.data == init.data and back.train == init.train
    assert back.coords == CONVENTION
    # the field it rebuilds evaluates exactly like the original
    coords = grid_coords((12, 10))
    batched = lambda p: {k: v.unsqueeze(0) for k, v in p.items()}
    assert torch.equal(back.field(batched(back.params), coords), init.field(batched(init.params), coords))

    meta = _meta_of(path)
    assert meta["format"] == "nfit-init" and meta["format_version"] == 1
    assert meta["signal"]["shape"] == [12, 10] and meta["signal"]["channels"] == 3


def test_save_converts_to_float32_and_the_hash_follows_the_content(tmp_path):
    init = _init(dtype=torch.float64)
    sha_a = save_init(init, tmp_path / "a.safetensors")
    back = load_init(tmp_path / "a.safetensors")
    for k, v in init.params.items():
        assert torch.equal(back.params[k], v.float())
    # same content, same bytes, same hash; a different initialisation, a different hash
    assert save_init(init, tmp_path / "b.safetensors") == sha_a
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    sha_c = save_init(_init(seed=1), tmp_path / "c.safetensors")
    assert sha_c != sha_a and load_init(tmp_path / "c.safetensors").sha256 == sha_c


def test_a_run_directory_stands_for_its_init_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    sha = save_init(_init(), run / "init.safetensors")
    back = load_init(run)
    assert back.sha256 == sha == hashlib.sha256((run / "init.safetensors").read_bytes()).hexdigest()
    # a directory without one is refused, naming the directory
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FieldFileError, match="directory") as info:
        load_init(empty)
    assert str(empty) in str(info.value)


def test_overwriting_replaces_the_file(tmp_path):
    path = tmp_path / "init.safetensors"
    save_init(_init(seed=0), path)
    sha = save_init(_init(seed=5), path)
    back = load_init(path)
    assert back.sha256 == sha
    fresh = _init(seed=5)
    assert all(torch.equal(back.params[k], fresh.params[k]) for k in fresh.params)


# ------------------------------------------------------------------------- refusals


def _rewrite(tmp_path, **edits):
    src = tmp_path / "good.safetensors"
    save_init(_init(), src)
    return rewrite(src, tmp_path / "bad.safetensors", **edits)


def _refused(path, reason):
    with pytest.raises(FieldFileError, match=reason) as info:
        load_init(path)
    assert str(path) in str(info.value), str(info.value)
    return info.value


def test_a_fitted_field_is_not_an_initialisation(tmp_path):
    params = build_field("siren", CFG).init_params(torch.Generator().manual_seed(0))
    nf = NeuralField("siren", dict(CFG), params, "image", (12, 10), 3, source="x.png")
    path = save_field(nf, tmp_path / "x.nf")
    err = _refused(path, "fitted")
    assert "field" in err.reason and "not an initialisation" in err.reason
    # also when it sits where a run's result would be
    run = tmp_path / "run"
    run.mkdir()
    save_field(nf, run / "init.safetensors")
    _refused(run / "init.safetensors", "fitted")
    _refused(run, "fitted")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"edit_meta": lambda m: m.update(format="other")}, "not an nfit initialisation"),
        ({"edit_meta": lambda m: m.pop("format")}, "not an nfit initialisation"),
        ({"edit_meta": lambda m: m.update(format_version=2)}, "unsupported init format version 2"),
        ({"edit_meta": lambda m: m.update(format_version="1")}, "unsupported init format version"),
        ({"raw_meta": "{not json"}, "not valid JSON"),
        ({"raw_meta": "[1, 2]"}, "not a JSON object"),
        ({"edit_meta": lambda m: m.update(modality="smell")}, "unknown modality"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[12])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[12, 0])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[12, 10.5])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[10**9, 10**9])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(channels=0)}, "invalid channel count"),
        ({"edit_meta": lambda m: m["signal"].update(channels=True)}, "invalid channel count"),
        ({"edit_meta": lambda m: m["signal"].update(channels=1)}, "signal is 2-D with 1"),
        ({"edit_meta": lambda m: m.pop("signal")}, "'signal' is missing or malformed"),
        ({"edit_meta": lambda m: m["coords"].update(name="corner")}, "coordinate convention"),
        ({"edit_meta": lambda m: m["field"].update(name="nerf")}, "unknown field"),
        ({"edit_meta": lambda m: m["field"]["config"].update(depth=1)}, "invalid 'siren' config"),
        ({"edit_meta": lambda m: m["field"]["config"].update(width=9)}, "has shape"),
        ({"edit_meta": lambda m: m.pop("algo")}, "'algo' is missing or malformed"),
        ({"edit_meta": lambda m: m.update(test=[16, 0.01])}, "'test' is missing or malformed"),
        ({"edit_tensors": lambda t: t.pop("l0.bias")}, "missing"),
        ({"edit_tensors": lambda t: t.update(extra=torch.zeros(1))}, "unexpected"),
        ({"edit_tensors": lambda t: t.update({"l1.weight": torch.zeros(8, 7)})}, "has shape"),
        ({"edit_tensors": lambda t: t.update({"l2.bias": torch.zeros(3, 1)})}, "has shape"),
        ({"edit_tensors": lambda t: t.update({"l1.bias": torch.zeros(8, dtype=torch.int32)})}, "not floating point"),
        ({"edit_tensors": lambda t: t["l0.weight"].view(-1)[3].fill_(float("nan"))}, "NaN"),
        ({"edit_tensors": lambda t: t["l2.bias"].fill_(float("inf"))}, "infinite"),
    ],
)
def test_invalid_init_files_are_refused(tmp_path, kwargs, reason):
    _refused(_rewrite(tmp_path, **kwargs), reason)


def test_not_safetensors_empty_truncated_or_missing(tmp_path):
    good = tmp_path / "good.safetensors"
    save_init(_init(), good)
    data = good.read_bytes()
    cases = {
        "empty.safetensors": (b"", "empty"),
        "text.safetensors": (b"hello world, not an initialisation", "not a safetensors file"),
        "short.safetensors": (b"abc", "not a safetensors file"),
        "huge_header.safetensors": ((10**12).to_bytes(8, "little") + b"{}", "not a safetensors file"),
        "trunc.safetensors": (data[: len(data) // 2], "safetensors"),
        "cut_tensors.safetensors": (data[:-8], "corrupt"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        _refused(tmp_path / name, reason)
    _refused(tmp_path / "missing.safetensors", "no such file")


def test_safetensors_without_nfit_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    _refused(path, "not written by nfit")
