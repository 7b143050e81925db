"""The .nf format: exact round trips, atomic writes, and refusal of every kind of bad file."""

import pytest
import torch
from corpus import rewrite
from safetensors.torch import save_file

from nfit.errors import FieldFileError
from nfit.fieldfile import FORMAT_VERSION, META_KEY, PACKED_KEY, PRESET, NeuralField, load_field, save_field
from nfit.fields import build_field


def _nf(width=8, channels=3, shape=(6, 5)):
    cfg = {"in_dim": 2, "out_dim": channels, "width": width, "depth": 3}
    params = build_field("siren", cfg).init_params(torch.Generator().manual_seed(0))
    return NeuralField("siren", cfg, params, "image", shape, channels, source="x.png", summary={"psnr": 30.0})


def test_round_trip_is_bit_exact(tmp_path):
    nf = _nf()
    save_field(nf, tmp_path / "a.nf")
    back = load_field(tmp_path / "a.nf")
    assert back.shape == (6, 5) and back.channels == 3 and back.summary == {"psnr": 30.0}
    assert back.coords["name"] == "pixel_center"
    for k, v in nf.params.items():
        assert torch.equal(back.params[k], v)
    torch.testing.assert_close(back.render(), nf.render(), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.nf"]  # no temporary left behind


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "a.nf"
    save_field(_nf(), path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("safetensors.torch.save", boom)  # the bytes nfit writes
    with pytest.raises(RuntimeError):
        save_field(_nf(width=4), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.nf"]


def _rewrite(tmp_path, **edits):
    src = tmp_path / "good.nf"
    save_field(_nf(), src)
    return rewrite(src, tmp_path / "bad.nf", **edits)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"edit_meta": lambda m: m.update(format_version=99)}, "unsupported format version 99"),
        ({"edit_meta": lambda m: m.update(format="other")}, "not an nfit field file"),
        ({"raw_meta": "{not json"}, "not valid JSON"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[6])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(shape=[10**9, 10**9])}, "not a valid image grid"),
        ({"edit_meta": lambda m: m["signal"].update(channels=1)}, "signal is 2-D with 1"),
        ({"edit_meta": lambda m: m["field"].update(name="nerf")}, "unknown field"),
        ({"edit_meta": lambda m: m["field"]["config"].update(width=9)}, "shape"),
        ({"edit_meta": lambda m: m["coords"].update(name="corner")}, "coordinate convention"),
        ({"edit_meta": lambda m: m.update(init={"sha256": "xyz"})}, "init"),
        ({"edit_tensors": lambda t: t.pop("l0.bias")}, "missing"),
        ({"edit_tensors": lambda t: t.update(extra=torch.zeros(1))}, "unexpected"),
        ({"edit_tensors": lambda t: t.update({"l1.weight": torch.zeros(8, 7)})}, "has shape"),
        ({"edit_tensors": lambda t: t["l0.weight"].fill_(float("nan"))}, "NaN"),
        ({"edit_meta": lambda m: m.update(storage={"dtype": "int8"})}, "'storage' is malformed"),
        # a damaged key (hypothesis found " parse" for "sparse": a KeyError traceback)
        ({"edit_meta": lambda m: m.update(storage={"dtype": "float32", " parse": None, "coding": None})},
         "'storage' is malformed"),
        ({"edit_meta": lambda m: m.update(storage={"dtype": "float32", "sparse": {"mask": "elsewhere"}})}, "storage.sparse"),
        ({"edit_meta": lambda m: m.update(storage={"dtype": "float32", "sparse": {"mask": "embedded"}})}, "no 'mask' tensor"),
        ({"edit_meta": lambda m: m.update(storage={"dtype": "float32", "sparse": {"mask": "init"}})}, "sha256"),
    ],
)
def test_invalid_files_are_refused(tmp_path, kwargs, reason):
    bad = _rewrite(tmp_path, **kwargs)
    with pytest.raises(FieldFileError, match=reason) as info:
        load_field(bad)
    assert str(bad) in str(info.value)


def test_version_1_files_still_read(tmp_path):
    """Files written before the "storage" entry (format version 1) are dense float32."""
    old = _rewrite(tmp_path, edit_meta=lambda m: (m.update(format_version=1), m.pop("storage")))
    back = load_field(old)
    assert back.dtype == "float32" and back.mask is None
    assert all(torch.equal(back.params[k], v) for k, v in load_field(tmp_path / "good.nf").params.items())


FORMAT6 = __import__("pathlib").Path(__file__).parent / "data" / "format6"
PRESET_SHA256 = "702714cb2177918df0b4469b36eb138271795d9abb3bee20b1ec408b2c8d5b6b"


@pytest.mark.parametrize("name, latents", [("chelsea_grid", "arm"), ("chelsea_tiles", None)])
def test_format_6_coded_files_still_decode(tmp_path, name, latents):
    """Coded files written before format 7 (the coding's table spelling every tensor's name and shape; see
    tests/data/README.md) decode to what nfit rendered from them then, and re-save in the current format with
    the same integers and steps in fewer bytes."""
    import imageio.v3 as iio
    import numpy as np

    import nfit

    old = FORMAT6 / f"{name}.nf"
    info = nfit.info(old)
    assert info["format_version"] == 6 and info["coding"]["latents"] == latents
    nf = load_field(old)
    rendered = np.round(nf.render().numpy() * 255).clip(0, 255).astype(np.uint8)
    assert np.array_equal(rendered, iio.imread(FORMAT6 / f"{name}.png"))
    again = load_field(nf.save(tmp_path / "again.nf"))
    assert nfit.info(tmp_path / "again.nf")["format_version"] == FORMAT_VERSION
    assert all(torch.equal(again.quantised.q[k], nf.quantised.q[k]) for k in nf.quantised.q)
    assert again.quantised.steps == nf.quantised.steps
    assert (tmp_path / "again.nf").stat().st_size < old.stat().st_size


def test_coded_files_pack_their_metadata_and_float_files_keep_it_plain(tmp_path):
    """Format 8: a coded field's metadata is deflated against the preset dictionary, in base85; it reads
    back as the same JSON, in a header ~1,000 bytes shorter than the plain one. A file of floats keeps
    the plain "nfit" key that any safetensors reader shows."""
    import hashlib
    import json

    from safetensors import safe_open

    from nfit.fieldfile import _meta_json, read_metadata, unpack_metadata

    import nfit

    # the dictionary every format 8 file was packed against: changing it would make them unreadable
    assert hashlib.sha256(PRESET).hexdigest() == PRESET_SHA256
    nf = load_field(FORMAT6 / "chelsea_grid.nf")
    packed = nf.save(tmp_path / "packed.nf")
    with safe_open(str(packed), framework="pt") as f:
        entries = f.metadata()
    assert set(entries) == {PACKED_KEY}
    meta = json.loads(read_metadata(packed))
    assert meta == json.loads(unpack_metadata(entries[PACKED_KEY])) and meta["format_version"] == FORMAT_VERSION
    assert meta["storage"]["coding"]["coder"] and meta == nf.metadata(meta["storage"]["coding"])
    plain_header = len(json.dumps({"__metadata__": {META_KEY: _meta_json(meta)}}))
    header = int.from_bytes(packed.read_bytes()[:8], "little")
    assert header < plain_header - 800, (header, plain_header)
    assert nfit.info(packed)["coding"]["bits"] == nf.quantised.bits
    back = load_field(packed)
    assert all(torch.equal(back.quantised.q[k], nf.quantised.q[k]) for k in nf.quantised.q)

    floats = save_field(NeuralField("siren", {"width": 8, "depth": 2}, build_field("siren", {"width": 8, "depth": 2})
                                    .init_params(torch.Generator().manual_seed(0)), "image", (4, 4), 3),
                        tmp_path / "floats.nf")
    with safe_open(str(floats), framework="pt") as f:
        assert set(f.metadata()) == {META_KEY}
        assert json.loads(f.metadata()[META_KEY])["format_version"] == FORMAT_VERSION


def test_not_safetensors_or_truncated(tmp_path):
    good = tmp_path / "good.nf"
    save_field(_nf(), good)
    cases = {
        "trunc.nf": good.read_bytes()[: good.stat().st_size // 2],
        "text.nf": b"hello world, not a field",
        "empty.nf": b"",
        "huge_header.nf": (10**12).to_bytes(8, "little") + b"{}",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FieldFileError):
            load_field(tmp_path / name)
    with pytest.raises(FieldFileError, match="no such file"):
        load_field(tmp_path / "missing.nf")


def test_safetensors_without_nfit_metadata(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.nf"))
    with pytest.raises(FieldFileError, match="not written by nfit"):
        load_field(tmp_path / "plain.nf")


def test_save_tensors_leaves_no_temporary_of_safetensors(tmp_path, monkeypatch):
    """nfit writes the bytes into its own temporary: safetensors' save_file (0.8) made a `.tmpXXXXXX` of its
    own beside it, which a kill left behind where nfit's clean-up, by its own names, never looks."""
    import safetensors.torch
    from safetensors.torch import load_file

    from nfit.fieldfile import save_tensors

    def no_save_file(*args, **kwargs):
        raise AssertionError("safetensors' save_file writes a temporary of its own")

    monkeypatch.setattr(safetensors.torch, "save_file", no_save_file)
    tmp = tmp_path / ".x.safetensors.abc.tmp.safetensors"
    save_tensors(tmp_path / "x.safetensors", tmp, {"w": torch.arange(6.0).reshape(2, 3)}, {"k": "v"})
    assert [p.name for p in tmp_path.iterdir()] == [tmp.name]
    assert torch.equal(load_file(tmp)["w"], torch.arange(6.0).reshape(2, 3))
