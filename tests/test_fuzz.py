"""Property-based fuzzing of the .nf and init loaders and of the image reader.

Whatever the bytes, a loader either succeeds or raises its typed error
(FieldFileError, InputError): no other exception, no hang (each call is timed),
and no memory blow-up (the process's peak resident set is compared before and after).
"""

import json
import os
import time

import numpy as np
import pytest
from corpus import encode, field_file, init_file, pixels, rewrite
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from nfit.device import peak_resident_bytes
from nfit.errors import FieldFileError, InputError
from nfit.fieldfile import load_field
from nfit.runs import load_init
from nfit.signals import read_signal
from nfit.signals.image import write_image

# 50 examples each keeps CI fast; NFIT_FUZZ_EXAMPLES=2000 for a long run (1,500 each found nothing more)
FUZZ = settings(max_examples=int(os.environ.get("NFIT_FUZZ_EXAMPLES", 50)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECONDS_PER_CALL = 10.0
MEMORY_GROWTH = 512 << 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = peak_resident_bytes()
    yield
    after = peak_resident_bytes()
    if before is not None:
        assert after - before < MEMORY_GROWTH, f"peak resident set grew by {(after - before) >> 20} MiB"


def mutated(data: bytes):
    """Strategies for damaged copies of ``data``: truncated, bytes overwritten, bytes inserted."""
    n = len(data)

    def overwrite(edits):
        out = bytearray(data)
        for pos, value in edits:
            out[pos % n] = value
        return bytes(out)

    header = st.integers(0, min(n - 1, 600))  # most structure sits in the first few hundred bytes
    anywhere = st.integers(0, n - 1)
    return st.one_of(
        st.integers(0, n - 1).map(lambda k: data[:k]),
        st.lists(st.tuples(st.one_of(header, anywhere), st.integers(0, 255)), min_size=1, max_size=8).map(overwrite),
        st.tuples(st.one_of(header, anywhere), st.binary(min_size=1, max_size=64)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] :]),
    )


def timed(call, path, allowed):
    start = time.monotonic()
    try:
        result = call(path)
    except allowed as err:
        assert str(path) in str(err)
        result = None
    assert time.monotonic() - start < SECONDS_PER_CALL
    return result


# ------------------------------------------------------------------ .nf and init files: raw bytes


@pytest.fixture(scope="module")
def good_nf(folder):
    return field_file(folder / "good.nf").read_bytes()


@pytest.fixture(scope="module")
def good_init(folder):
    return init_file(folder / "good.safetensors").read_bytes()


@FUZZ
@given(data=st.data())
def test_nf_loader_on_damaged_bytes(folder, good_nf, data):
    path = folder / "fuzz.nf"
    path.write_bytes(data.draw(mutated(good_nf)))
    nf = timed(load_field, path, FieldFileError)
    if nf is not None:  # what loads must also decode
        assert nf.render().shape == (*nf.shape, nf.channels)


@FUZZ
@given(data=st.data())
def test_init_loader_on_damaged_bytes(folder, good_init, data):
    path = folder / "fuzz.safetensors"
    path.write_bytes(data.draw(mutated(good_init)))
    timed(load_init, path, FieldFileError)


# ------------------------------------------------------------------ .nf and init files: metadata values

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
NF_KEYS = [("format",), ("format_version",), ("modality",), ("signal",), ("signal", "shape"), ("signal", "channels"),
           ("signal", "bit_depth"), ("signal", "source"), ("coords",), ("coords", "name"), ("field",), ("field", "name"),
           ("field", "config"), ("field", "config", "width"), ("field", "config", "depth"), ("field", "config", "w0"),
           ("field", "config", "in_dim"), ("init",), ("init", "sha256"), ("fit",)]
INIT_KEYS = [k for k in NF_KEYS if k[0] not in ("init", "fit")] + [("algo",), ("test",), ("data",), ("train",)]


def edit(path, value, delete):
    def apply(meta):
        node = meta
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if delete:
                node.pop(path[-1], None)
            else:
                node[path[-1]] = value
    return apply


@FUZZ
@given(path=st.sampled_from(NF_KEYS), value=json_values, delete=st.booleans())
def test_nf_loader_on_any_metadata_value(folder, path, value, delete):
    bad = rewrite(field_file(folder / "base.nf"), folder / "meta.nf", edit_meta=edit(path, value, delete))
    nf = timed(load_field, bad, FieldFileError)
    if nf is not None:
        nf.render()


@FUZZ
@given(path=st.sampled_from(INIT_KEYS), value=json_values, delete=st.booleans())
def test_init_loader_on_any_metadata_value(folder, path, value, delete):
    bad = rewrite(init_file(folder / "base.safetensors"), folder / "meta.safetensors", edit_meta=edit(path, value, delete))
    timed(load_init, bad, FieldFileError)


def test_metadata_json_edge_cases(folder):
    """Text that is JSON to some parsers and a trap to others."""
    for raw in ("[" * 50_000, "1" * 10_000, '{"format": "nfit-field", "format_version": 1e999}', '"\\ud800"', "NaN",
                json.dumps({"a": "x" * 1000})):
        bad = rewrite(field_file(folder / "base.nf"), folder / "edge.nf", raw_meta=raw)
        with pytest.raises(FieldFileError):
            load_field(bad)


# ------------------------------------------------------------------ the image reader


def _seeds():
    small = pixels()[:8, :12]
    grey16 = (small[..., 0].astype(np.uint16) * 257)
    seeds = {
        "png": encode(Image.fromarray(small), "PNG"),
        "jpg": encode(Image.fromarray(small), "JPEG", quality=90),
        "gif": encode(Image.fromarray(small), "GIF"),
        "bmp": encode(Image.fromarray(small), "BMP"),
        "tif": encode(Image.fromarray(small), "TIFF"),
        "webp": encode(Image.fromarray(small), "WEBP", lossless=True),
    }
    return seeds, grey16


@pytest.fixture(scope="module")
def image_seeds(folder):
    seeds, grey16 = _seeds()
    write_image(folder / "seed16.png", grey16[..., None], "png")  # 16-bit: pypng's path
    seeds["png16"] = (folder / "seed16.png").read_bytes()
    return seeds


@FUZZ
@given(kind=st.sampled_from(["png", "png16", "jpg", "gif", "bmp", "tif", "webp"]), data=st.data())
def test_image_reader_on_damaged_bytes(folder, image_seeds, kind, data):
    path = folder / f"fuzz.{'png' if kind == 'png16' else kind}"
    path.write_bytes(data.draw(mutated(image_seeds[kind])))
    signal = timed(read_signal, path, InputError)
    if signal is not None:
        v = signal.values
        assert v.dtype == np.float32 and v.ndim == 3 and 1 <= v.shape[-1] <= 4
        assert np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
