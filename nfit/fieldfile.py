"""The .nf file (one fitted signal) and the init file (a learned initialisation):
safetensors tensors plus JSON metadata.

Layout: one tensor per field parameter (unbatched, float32) and one metadata key,
``"nfit"``, holding JSON (safetensors metadata is str -> str, so it nests there):

    format, format_version     "nfit-field", 1
    nfit_version               the writer's version
    modality                   "image", ...
    signal                     shape (grid, array order), channels, value_range, bit_depth, source name
    coords                     the coordinate convention (see nfit.signals.grid)
    field                      registry name and config: the file rebuilds its own network
    fit                        summary of how it was fitted (steps, PSNR, SSIM, seconds, ...)
    init                       {"name": ..., "sha256": ...} of the initialisation it started from
    storage                    dtype of the values (float32, float16) and, for a field fitted from
                               a sparse initialisation, where its mask is (see below)
    tiling                     (format 3) null for one field over the whole signal; else the tile
                               size and overlap per axis, the layout and blend rules
                               (see nfit.tiling): the file holds one field per tile, each tensor
                               with a leading dimension of the tile count, row-major over the tiles

A coded field (format 4, ``storage.coding`` not null; see :mod:`nfit.coding`) holds one
uint8 tensor, ``payload``: the range-coded integers of every stored tensor, in parameter
order. ``storage.coding`` gives the coder, the bit width, what the integers are relative
to ("init": the initialisation named in ``init``, which reading then needs; "zero"), and
per tensor its name, step, Laplace scale and stored shape, and the payload's size and CRC-32.
(Format 5) A scale may be a list of ``nfit.coding.CONTEXTS`` scales: that tensor's integers are
coded row by row, each under the scale of its context, from its neighbours in the rows above
(a latent grid's latents, where that codes smaller). (Format 6) A scale may be "arm": a latent
grid's latents coded under the means and scales its autoregressive model (``nfit.arm``, the
field's ``arm.*`` tensors, listed and coded before the latents) predicts from decoded neighbours.
(Format 7) The per-tensor table is two lists in payload order (:func:`coded_order`), ``steps`` and
``scales``, and ``shapes`` only for the tensors whose stored shape is not the field's own (a sparse
weight's surviving values): the field names them and gives the rest. Spelling out names and shapes
took ~450 of a 0.3 bpp latent grid's 14,000 bytes.
(Format 8) A coded field's metadata is the same JSON, packed (:func:`pack_metadata`): deflated
against a preset dictionary of the keys and common values of nfit's metadata (``PRESET``), in base85
(no character that JSON escapes), under the key ``"nfit.deflate85"`` instead of ``"nfit"``. The escaped
JSON took ~1,300 of a 0.3 bpp latent grid's ~14,500 bytes; packed it takes ~250 (``nfit info``
shows all of it). Files that store floats keep the plain ``"nfit"`` key, and both read.

A field fitted from a sparse initialisation (Meta-SparseINR) stores each weight
matrix as the 1-D vector of its surviving values, in row-major order of the mask.
The mask itself is the initialisation's, named by its SHA-256, so reading the
values back needs that file; ``standalone`` files embed the mask instead, as one
tensor ``mask`` of packed bits (all weight matrices, in parameter order).

An init file (``init.safetensors``, written by ``nfit meta-train``) has the same
frame with ``format`` "nfit-init": the field's parameters, and metadata naming the
modality, signal shape and channels it was trained for, the field, the algorithm
and its hyperparameters, the test-time defaults, the data and the validation PSNR.
A .nf fitted from it records the init file's SHA-256. A sparse initialisation
(one level of ``nfit meta-train --algo sparse``) adds one bool tensor per weight
matrix, ``mask/<name>``, and a ``sparsity`` metadata entry (level, density, ...).

Loading validates all of it and raises :class:`FieldFileError` with the reason.
Nothing here unpickles; names in the metadata are informative and never used as paths.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfit._version import __version__
from nfit.atomic import atomic_output
from nfit.config import MAX_FIELD_SIZE, MAX_GRID_SAMPLES, MAX_HEADER_BYTES, MAX_METADATA_BYTES, MAX_TILES
from nfit.arm import PREFIX as ARM_PREFIX
from nfit.arm import Exact
from nfit.coding import (ARM, CODER, CONTEXTS, INT, MAX_BITS, MIN_BITS, CodingError, Quantised, checksum, decode,
                         dequantise, encode)
from nfit.errors import ConfigError, FieldFileError, OutputError
from nfit.fields import Field, Params, build_field, count_params
from nfit.fields.masked import Mask, Masked, density, pack_mask, prunable, stored_values, unpack_mask
from nfit.render import render_values
from nfit.signals import CONVENTION, MODALITIES
from nfit.tiling import BLEND, LAYOUT, Tiling

FORMAT = "nfit-field"
# 8: a coded field's metadata is packed (PACKED_KEY); 7: the coding's table holds steps and scales, not
# the names and shapes the field gives; 6: a coded tensor's scale may be "arm" (nfit.arm); 5: a coded
# tensor's scale may be a list, one per context; 4: "storage.coding"; 3: "tiling"; 2: the "storage"
# entry (float16, sparse); all still read
FORMAT_VERSION = 8
READ_VERSIONS = {1, 2, 3, 4, 5, 6, 7, 8}
INIT_FORMAT = "nfit-init"
INIT_FORMAT_VERSION = 1
META_KEY = "nfit"
PACKED_KEY = "nfit.deflate85"  # (format 8) the same JSON, packed: see pack_metadata
# Deflate's preset dictionary for packed metadata: strings a deflated text may refer back to as if they
# came before it. The keys and common values of a field's metadata, the commonest last (nearer, so
# cheaper to refer to); at 0.3 bpp a 768x512 latent grid's metadata packs into ~250 bytes, ~720
# with no dictionary. Every format 8 file was packed against exactly these bytes: never change them.
PRESET = (
    '"sparse":{"mask":"embedded","density":,"values":}"mask":"init",'
    '"init":{"name":"default:audio","algo":"gradncp","sha256":"'
    '"method":"sgd-rescaled+adam","lr":0.01,"gamma":0.25,"adam_lr":0.001,"fit_target_psnr":'
    '"in_dim":1,"out_dim":1,"coord_scale":10.0,"width":32,"depth":4}"w0":30.0,"w0_first":null,"out_offset":0.5,'
    '"coord_scale":1.0"modality":"audio","bit_depth":16,"rate":8000.0,"ssim":null,"tiles":,"tile_batches":1,'
    '"tiling":{"tile":[32,32],"overlap":[4,4],"layout":"even","blend":"smoothstep"}}'
    '{"format":"nfit-field","format_version":8,"nfit_version":"0.1.0","modality":"image","signal":{"shape":[512,768],'
    '"channels":3,"value_range":[0.0,1.0],"bit_depth":8,"source":".png","source_bytes":,"rate":null},'
    '"coords":{"name":"pixel_center","range":[-1.0,1.0],"order":"array"},"field":{"name":"siren","config":'
    '{"name":"grid","config":{"in_dim":2,"out_dim":3,"size":[512,768],"gain_floor":0.25,"arm":8,"slope":0.01}},'
    '"fit":{"method":"adam-rd","steps":800,"lr":0.02,"seed":0,"target_psnr":null,"seconds":,"batch":1,'
    '"device":"cpu","stopped":"steps","lambda":0.00,"psnr":,"ssim":0.,"bits":12},'
    '"init":{"name":"random","seed":0,"sha256":null},"storage":{"dtype":"float32","sparse":null,"coding":'
    '{"coder":"laplace-range","bits":,"relative_to":"zero","bytes":,"crc32":,"steps":[0.00,1.0,1.0,1.0,1.0,1.0,1.0,'
    '1.0],"scales":[,"arm","arm","arm","arm","arm","arm","arm"],"shapes":{}}},"tiling":null}'
).encode("ascii")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
MASK_PREFIX = "mask/"
PAYLOAD = "payload"  # the one tensor of a coded field (besides an embedded mask)
RELATIVE_TO = ("init", "zero")


@dataclass
class NeuralField:
    """A fitted signal: a field, its parameters, and what it represents."""

    field_name: str
    field_config: dict[str, Any]
    params: Params  # float32, CPU: unbatched, or one set per tile [n_tiles, ...] when ``tiling``
    modality: str
    shape: tuple[int, ...]  # native grid, array order: (H, W) for images
    channels: int
    bit_depth: int = 8
    source: str | None = None  # the fitted file's name, for people; never used as a path
    source_bytes: int | None = None  # the fitted file's size, so `nfit info` can compare
    rate: float | None = None  # audio: samples per second; video: frames per second
    summary: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=lambda: {"name": "random", "sha256": None})
    coords: dict[str, Any] = field(default_factory=lambda: dict(CONVENTION))
    value_range: tuple[float, float] = (0.0, 1.0)
    # How the file stores the values: their dtype, and for a field fitted from a
    # sparse initialisation its mask (weights outside it are zero and not stored),
    # embedded in the file when ``standalone``, else read from that initialisation.
    dtype: str = "float32"
    mask: Mask | None = None
    standalone: bool = False
    tiling: Tiling | None = None  # None: one field over the whole signal
    # Coded storage (nfit.coding): the integers ``params`` were decoded from, relative to the
    # initialisation's parameters when the field was fitted from one, else to zero. None: floats.
    quantised: Quantised | None = None

    @cached_property
    def field(self) -> Field:
        return build_field(self.field_name, self.field_config)

    @property
    def relative_to(self) -> str:
        """What coded integers are differences from: the initialisation the field was fitted from, or zero."""
        return "init" if self.init.get("sha256") else "zero"

    @property
    def tiles(self) -> int:
        """Fields the file holds: one per tile, or 1."""
        return 1 if self.tiling is None else self.tiling.count(self.shape)

    @property
    def n_params(self) -> int:
        return count_params(self.field) * self.tiles

    @property
    def n_values(self) -> int:
        """Values the file stores: every parameter, or the surviving weights plus the biases."""
        return stored_values(count_params(self.field), self.mask) * self.tiles

    def storage(self) -> dict[str, Any]:
        sparse = None
        if self.mask is not None:
            sparse = {"mask": "embedded" if self.standalone else "init", "density": round(density(self.mask), 6),
                      "values": self.n_values}
        coding = None if self.quantised is None else {
            "coder": CODER, "bits": self.quantised.bits, "relative_to": self.relative_to}
        return {"dtype": self.dtype, "sparse": sparse, "coding": coding}

    def metadata(self, coding: dict[str, Any] | None = None) -> dict[str, Any]:
        """The file's JSON; ``coding``: the full ``storage.coding`` entry of a coded file, from :func:`save_field`."""
        storage = self.storage()
        if coding is not None:
            storage["coding"] = coding
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nfit_version": __version__,
            "modality": self.modality,
            "signal": {
                "shape": list(self.shape),
                "channels": self.channels,
                "value_range": list(self.value_range),
                "bit_depth": self.bit_depth,
                "source": self.source,
                "source_bytes": self.source_bytes,
                "rate": self.rate,
            },
            "coords": self.coords,
            "field": {"name": self.field_name, "config": self.field_config},
            "fit": self.summary,
            "init": self.init,
            "storage": storage,
            "tiling": None if self.tiling is None else self.tiling.to_json(),
        }

    def render(self, shape: tuple[int, ...] | None = None, **kwargs) -> Tensor:
        """Decode on a grid (native by default): float32 ``[*shape, C]`` in [0, 1]. See :func:`nfit.render.render_values`."""
        return render_values(self, shape, **kwargs)

    def save(self, path: str | Path) -> Path:
        return save_field(self, path)


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> Path:
    """Tensors (as they are, moved to the CPU) plus the nfit JSON metadata, written atomically."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    entry = _meta_entry(metadata)
    with atomic_output(path) as tmp:
        save_tensors(path, tmp, tensors, entry)
    return path


def save_tensors(path: Path, tmp: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` as safetensors bytes written into ``tmp`` (an atomic write of ``path``), failures as
    OutputError: the write failed and the previous ``path`` must stay. safetensors reports its own
    as SafetensorError; an OSError writing ``tmp``, atomic_output turns into OutputError.

    The bytes are made in memory and written here rather than by safetensors' save_file, which
    (0.8) writes through a temporary file of its own, ``.tmpXXXXXX`` beside ``tmp``: a process
    killed during it left that behind, where nfit's clean-up of its own temporaries (by name,
    nfit.atomic.stale_temporaries) cannot know it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save

    try:
        data = save(tensors, metadata=metadata)
    except SafetensorError as err:
        raise OutputError(path, f"cannot write ({_short(err)})") from None
    tmp.write_bytes(data)


def _stored(nf: NeuralField, values: dict[str, Tensor]) -> dict[str, Tensor]:
    """What the file holds of each parameter: all of it, or a sparse weight's surviving values."""
    out = {}
    for k, v in values.items():
        if nf.mask is not None and k in nf.mask:
            m = nf.mask[k].to(v.device)
            v = v[m] if nf.tiling is None else v[:, m]  # the surviving values, row-major: [nnz] (or [tiles, nnz])
        out[k] = v
    return out


def field_tensors(nf: NeuralField) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The tensors a .nf file of ``nf`` holds, and for a coded field its ``storage.coding`` entry."""
    if nf.dtype not in DTYPES:
        raise ConfigError("--dtype", f"must be one of {', '.join(DTYPES)}, not {nf.dtype!r}")
    coding = None
    if nf.quantised is None:
        tensors = {k: v.to(DTYPES[nf.dtype]) for k, v in _stored(nf, nf.params).items()}
    else:
        ints = _stored(nf, {k: nf.quantised.q[k] for k in coded_order(nf.field)})
        latents = getattr(nf.field, "latent_names", [])
        arm = None
        if latents and nf.field.config.arm:  # its model first, then the latents it codes (nfit.arm)
            arm = (Exact.from_ints({k: v.numpy() for k, v in ints.items() if k.startswith(ARM_PREFIX)},
                                   nf.quantised.steps), latents)
        # else a latent grid's latents by context of their decoded neighbours (nfit.coding.contexts)
        payload, scales = encode(ints, nf.quantised.bits, by_context=latents, arm=arm)
        tensors = {PAYLOAD: torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload
                   else torch.zeros(0, dtype=torch.uint8)}
        own = _own_shapes(nf.field, None if nf.tiling is None else nf.tiles)
        coding = {**nf.storage()["coding"], "bytes": len(payload), "crc32": checksum(payload),
                  "steps": [_short_float32(nf.quantised.steps[k]) for k in ints], "scales": [scales[k] for k in ints],
                  "shapes": {k: list(v.shape) for k, v in ints.items() if tuple(v.shape) != own[k]}}
    if nf.mask is not None and nf.standalone:
        tensors["mask"] = pack_mask(nf.mask)
    return tensors, coding


def coded_order(field_: Field) -> list[str]:
    """The order of a coded field's tensors in its payload: the parameters' own, but a latent grid with an
    autoregressive model has the model first and the latents it predicts after it (nfit.arm)."""
    names = list(field_.param_shapes())
    latents = getattr(field_, "latent_names", [])
    if latents and field_.config.arm:
        names = [k for k in names if k not in latents] + latents
    return names


def _own_shapes(field_: Field, tiles: int | None) -> dict[str, tuple[int, ...]]:
    """Each parameter's stored shape when the file holds all of it: its own, or one per tile [tiles, ...]."""
    return {k: tuple(s) if tiles is None else (tiles, *s) for k, s in field_.param_shapes().items()}


def save_field(nf: NeuralField, path: str | Path) -> Path:
    """Write ``nf`` to ``path`` atomically. Returns the path."""
    tensors, coding = field_tensors(nf)
    return write_safetensors(path, tensors, nf.metadata(coding))


def field_bytes(nf: NeuralField) -> int:
    """The size of the .nf file :func:`save_field` would write, without writing it."""
    from safetensors.torch import save

    tensors, coding = field_tensors(nf)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return len(save(tensors, metadata=_meta_entry(nf.metadata(coding))))


def _short_float32(step: float) -> float:
    """A step as the shortest number that reads back as the same float32 (what decoding multiplies by),
    where it is a float32: 9 digits or fewer in the metadata rather than 17."""
    single = np.float32(step)
    short = float(str(single))
    return short if float(single) == step and np.float32(short) == single else step


def _meta_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, separators=(",", ":"), allow_nan=False)


def _meta_entry(metadata: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata that holds ``metadata``: packed for a coded field (format 8), whose size
    is what it is for, else plain JSON that any safetensors reader shows as it is."""
    text = _meta_json(metadata)
    coded = isinstance(metadata.get("storage"), dict) and metadata["storage"].get("coding") is not None
    return {PACKED_KEY: pack_metadata(text)} if coded else {META_KEY: text}


def pack_metadata(text: str) -> str:
    """JSON ``text`` deflated against PRESET (raw deflate, level 9), in base85: the value of PACKED_KEY."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, PRESET)
    return base64.b85encode(packer.compress(text.encode("utf-8")) + packer.flush()).decode("ascii")


def unpack_metadata(packed: str) -> str:
    """The JSON text of a PACKED_KEY value, at most MAX_METADATA_BYTES; ValueError (with the reason) when it
    is not base85, not a whole deflate stream against PRESET, or unpacks to more than that."""
    if len(packed) > MAX_METADATA_BYTES:
        raise ValueError(f"packed metadata is {len(packed):,} characters, over nfit's limit of {MAX_METADATA_BYTES:,}")
    try:
        data = base64.b85decode(packed)
        unpacker = zlib.decompressobj(-15, zdict=PRESET)
        text = unpacker.decompress(data, MAX_METADATA_BYTES + 1)  # bounded: a small stream may inflate hugely
    except (ValueError, zlib.error) as err:
        raise ValueError(f"packed metadata is corrupt ({_short(err)})") from None
    if len(text) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata unpacks to over nfit's limit of {MAX_METADATA_BYTES:,} bytes")
    if not unpacker.eof or unpacker.unused_data:
        raise ValueError("packed metadata is corrupt (truncated, or bytes after its end)")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("packed metadata is corrupt (not UTF-8 text)") from None


def _meta_text(entries: dict[str, str], path: Path, error: type) -> str | None:
    """The nfit JSON text in a safetensors file's metadata ``entries``, plain or packed; None when neither."""
    if META_KEY in entries or PACKED_KEY not in entries:
        return entries.get(META_KEY)
    try:
        return unpack_metadata(entries[PACKED_KEY])
    except ValueError as err:
        raise error(path, str(err)) from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_safetensors(path: Path, error: type = FieldFileError) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read every tensor and the nfit JSON metadata of a safetensors file, checking its frame."""
    from safetensors import SafetensorError, safe_open

    if not path.exists():
        raise error(path, "no such file")
    if path.is_dir():
        raise error(path, "is a directory, not a file")
    size = path.stat().st_size
    if size == 0:
        raise error(path, "file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(8)
    header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
    if header_len < 2 or header_len > min(MAX_HEADER_BYTES, size - 8):
        raise error(path, "not a safetensors file (bad or truncated header)")
    try:
        with safe_open(str(path), framework="pt") as f:
            entries = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise error(path, f"corrupt safetensors data ({_short(err)})") from None
    raw_meta = _meta_text(entries, path, error)
    if raw_meta is None:
        raise error(path, f"no {META_KEY!r} metadata: not written by nfit")
    if len(raw_meta) > MAX_METADATA_BYTES:
        raise error(path, f"metadata is {len(raw_meta):,} bytes, over nfit's limit of {MAX_METADATA_BYTES:,}")
    try:
        meta = json.loads(raw_meta)
    except (ValueError, RecursionError):  # JSONDecodeError, huge integers, absurd nesting
        raise error(path, "metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise error(path, "metadata is not a JSON object")
    return tensors, meta


def _short(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def _r(value: Any) -> str:
    """repr for an error message, cut short: metadata values come from the file."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_format(path: Path) -> str | None:
    """The ``format`` a file declares (without loading its tensors), or None when unreadable."""
    try:
        return json.loads(read_metadata(path)).get("format")
    except Exception:  # any failure: let the full loader report it properly
        return None


def is_field_file(path: Path) -> bool:
    """Whether ``path`` is a .nf file that nfit wrote (its metadata says so), which a new fit may replace."""
    return read_format(path) == FORMAT


def check_params(
    path: Path, field_: Field, tensors: dict[str, Tensor], error: type = FieldFileError, mask: Mask | None = None,
    tiles: int | None = None,
) -> Params:
    """Tensors must be exactly the field's parameters, in shape, and finite; returns them as float32.

    With a ``mask``, each masked weight is stored as its surviving values [nnz] and
    comes back as the full matrix with zeros elsewhere. With ``tiles``, every tensor has
    a leading dimension of that many tiles.
    """
    lead = () if tiles is None else (tiles,)
    expected = _own_shapes(field_, tiles)
    for k, m in (mask or {}).items():
        expected[k] = lead + (int(m.sum()),)
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        names = sorted(missing or extra)
        detail = ("missing " if missing else "unexpected ") + _r(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise error(path, f"tensors do not match the field: {detail}")
    params: Params = {}
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise error(path, f"tensor {name!r} has shape {tuple(t.shape)}, the field needs {tuple(shape)}")
        if not t.is_floating_point():
            raise error(path, f"tensor {name!r} has dtype {t.dtype}, not floating point")
        t = t.float()
        if not torch.isfinite(t).all():
            raise error(path, f"tensor {name!r} contains NaN or infinite values")
        if mask is not None and name in mask:
            full = torch.zeros(lead + tuple(field_.param_shapes()[name]))
            t = full.masked_scatter_(mask[name].expand_as(full), t)
        params[name] = t
    return params


def _get(meta: dict, path: Path, key: str, kind: type | tuple[type, ...]):
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise FieldFileError(path, f"metadata field {key!r} is missing or malformed")
    return value


# format -> (its version, what a file of it is called, what to say when it is given for the other kind)
_KINDS = {
    FORMAT: (READ_VERSIONS, "field file", "format version",
             "is a fitted .nf field, not an initialisation (init files come from nfit meta-train)"),
    INIT_FORMAT: ({INIT_FORMAT_VERSION}, "initialisation", "init format version",
                  "is an initialisation (from nfit meta-train), not a fitted field: use it with --init"),
}


def _check_kind(meta: dict, path: Path, wanted: str) -> None:
    """The metadata declares the ``wanted`` format, at the version this nfit reads."""
    versions, noun, version_noun, _ = _KINDS[wanted]
    found = meta.get("format")
    if isinstance(found, str) and found in _KINDS and found != wanted:
        raise FieldFileError(path, _KINDS[found][3])
    if found != wanted:
        raise FieldFileError(path, f"not an nfit {noun} (format {_r(found)})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in versions:
        readable = " and ".join(map(str, sorted(versions)))
        raise FieldFileError(path, f"unsupported {version_noun} {_r(version)} (this nfit reads {readable})")


def _storage_meta(meta: dict, path: Path) -> dict[str, Any]:
    """The "storage" entry, validated; files before format version 2 are dense float32. A coded file's table
    of tensors is checked for its form here, against the field in :func:`_field_header`."""
    storage = meta.get("storage", {"dtype": "float32", "sparse": None})
    if not isinstance(storage, dict) or storage.get("dtype") not in DTYPES or "sparse" not in storage:
        raise FieldFileError(path, "metadata field 'storage' is malformed")
    sparse = storage.get("sparse")
    if sparse is not None and (not isinstance(sparse, dict) or sparse.get("mask") not in ("init", "embedded")):
        raise FieldFileError(path, "metadata field 'storage.sparse' is malformed")
    coding = storage.setdefault("coding", None)  # before format version 4: floats
    if coding is not None and not _valid_coding(coding, meta["format_version"]):
        raise FieldFileError(path, f"metadata field 'storage.coding' is malformed or of another coder ({_r(coding)})")
    return storage


def _valid_coding(coding: Any, version: int) -> bool:
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1e30

    def count(v: Any) -> bool:
        return type(v) is int and 0 <= v < 1 << 40

    def scale(v: Any) -> bool:  # one number, ARM, or one per context
        return number(v) or v == ARM or isinstance(v, list) and len(v) == CONTEXTS and all(map(number, v))

    def shape(v: Any) -> bool:
        return isinstance(v, list) and len(v) <= 8 and all(count(n) for n in v)

    if not (isinstance(coding, dict) and coding.get("coder") == CODER and type(coding.get("bits")) is int
            and MIN_BITS <= coding["bits"] <= MAX_BITS and coding.get("relative_to") in RELATIVE_TO
            and count(coding.get("bytes")) and count(coding.get("crc32"))):
        return False
    if version < 7:  # [name, step, scale, shape] per tensor
        return isinstance(coding.get("tensors"), list) and all(
            isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and number(e[1]) and scale(e[2])
            and shape(e[3]) for e in coding["tensors"])
    steps, scales, shapes = coding.get("steps"), coding.get("scales"), coding.get("shapes")
    return (isinstance(steps, list) and isinstance(scales, list) and len(steps) == len(scales)
            and all(map(number, steps)) and all(map(scale, scales)) and isinstance(shapes, dict)
            and all(shape(v) for v in shapes.values()))


def _coding_table(path: Path, coding: dict[str, Any], field_: Field, tiles: int | None) -> list[list]:
    """A format-7 coding's tensors as earlier formats list them, ``[name, step, scale, shape]`` in payload
    order: the names from the field (:func:`coded_order`), each shape its own unless the file gives another."""
    names, own = coded_order(field_), _own_shapes(field_, tiles)
    if len(coding["steps"]) != len(names) or not set(coding["shapes"]) <= set(names):
        raise FieldFileError(path, f"coded payload declares other tensors than the field's {len(names)}")
    return [[k, step, scale, coding["shapes"].get(k, list(own[k]))]
            for k, step, scale in zip(names, coding["steps"], coding["scales"])]


def _coded_ints(path: Path, tensors: dict[str, Tensor], coding: dict[str, Any], limit: int) -> dict[str, Tensor]:
    """The integers of a coded field, per stored tensor (the shapes its metadata declares, at most
    ``limit`` values in all), from its payload: checked by size and CRC-32 before it is decoded."""
    payload = tensors.pop(PAYLOAD, None)
    if payload is None or payload.dtype != torch.uint8 or payload.dim() != 1:
        raise FieldFileError(path, f"a coded field needs one 1-D uint8 tensor {PAYLOAD!r}")
    data = payload.numpy().tobytes()
    if len(data) != coding["bytes"] or checksum(data) != coding["crc32"]:
        raise FieldFileError(path, f"coded payload is corrupt ({len(data):,} bytes, CRC-32 {checksum(data)}; "
                             f"its metadata says {coding['bytes']:,} bytes, CRC-32 {coding['crc32']})")
    shapes = {name: tuple(shape) for name, _, _, shape in coding["tensors"]}
    scales = {name: scale for name, _, scale, _ in coding["tensors"]}
    steps = {name: step for name, step, _, _ in coding["tensors"]}
    if len(shapes) != len(coding["tensors"]) or sum(math.prod(s) for s in shapes.values()) > limit:
        raise FieldFileError(path, f"coded payload declares other tensors than the field's {limit:,} values")
    try:
        return decode(data, coding["bits"], shapes, scales, steps)
    except CodingError as err:
        raise FieldFileError(path, f"coded payload is corrupt ({err})") from None


def _named_init(path: Path, init_meta: dict, init: MetaInit | None, *, nameless: str, missing: str) -> MetaInit:
    """The initialisation a .nf names in ``init_meta`` (its record of it), given as ``init``: checked by
    SHA-256. ``nameless``: the reason when the file names none; ``missing``: when none was given."""
    sha = init_meta.get("sha256")
    if sha is None:
        raise FieldFileError(path, nameless)
    if init is None:
        raise FieldFileError(path, f"{missing} (sha256 {sha})")
    if init.sha256 != sha:
        raise FieldFileError(path, f"was fitted from the initialisation with sha256 {sha}, not {init.sha256} (--init)")
    return init


def _coding_reference(path: Path, nf: NeuralField, field_: Field, coding: dict[str, Any],
                      init: MetaInit | None) -> Params | None:
    """The parameters a coded field's integers are differences from: its initialisation's (checked by hash), or None."""
    if coding["relative_to"] == "zero":
        return None
    init = _named_init(path, nf.init, init, nameless="is coded relative to an initialisation but names none",
                       missing="is stored as its difference from an initialisation: give it with --init")
    shapes = field_.param_shapes()
    if set(init.params) != set(shapes) or any(tuple(init.params[k].shape) != tuple(s) for k, s in shapes.items()):
        raise FieldFileError(path, "its initialisation's parameters do not match the field")
    return init.params


def _field_mask(path: Path, field_: Field, tensors: dict[str, Tensor], storage: dict, init_meta: dict,
                init: MetaInit | None) -> Mask | None:
    """The mask of a sparse field: unpacked from the file, or the initialisation's (checked by hash)."""
    sparse = storage["sparse"]
    if sparse is None:
        return None
    shapes = {k: field_.param_shapes()[k] for k in prunable(field_.param_shapes())}
    if sparse["mask"] == "embedded":
        packed = tensors.pop("mask", None)
        if packed is None:
            raise FieldFileError(path, "declares an embedded mask but has no 'mask' tensor")
        try:
            return unpack_mask(packed, shapes)
        except ValueError as err:
            raise FieldFileError(path, str(err)) from None
    init = _named_init(path, init_meta, init,
                       nameless="a sparse field without an embedded mask must name its initialisation's sha256",
                       missing="stores only the surviving weights of a sparse field: give the initialisation that "
                               "holds its mask with --init")
    if init.mask is None or set(init.mask) != set(shapes):
        raise FieldFileError(path, "its initialisation holds no matching mask")
    return init.mask


def load_field(path: str | Path, init: MetaInit | None = None) -> NeuralField:
    """Read and validate a .nf file. A sparse field stored without its mask needs ``init``,
    the initialisation it was fitted from (checked by SHA-256)."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    nf, field_, storage = _field_header(path, meta)
    _read_values(path, nf, field_, tensors, storage, init)
    return nf


def _read_values(path: Path, nf: NeuralField, field_: Field, tensors: dict[str, Tensor], storage: dict,
                 init: MetaInit | None) -> None:
    """Fill ``nf.params`` (and its mask, and a coded field's integers) from the file's tensors, validated."""
    mask = _field_mask(path, field_, tensors, storage, nf.init, init)
    tiles = None if nf.tiling is None else nf.tiles
    coding = storage["coding"]
    if coding is None:
        nf.params = check_params(path, field_, tensors, mask=mask, tiles=tiles)
    else:
        reference = _coding_reference(path, nf, field_, coding, init)
        ints = {k: v.float() for k, v in _coded_ints(path, tensors, coding, nf.n_params).items()}  # exact: |q| < 2**15
        ints = check_params(path, field_, {**tensors, **ints}, mask=mask, tiles=tiles)  # shapes; sparse: scattered
        steps = {name: float(step) for name, step, _, _ in coding["tensors"]}
        nf.quantised = Quantised(coding["bits"], {k: v.to(INT) for k, v in ints.items()}, steps)
        nf.params = dequantise(nf.quantised, reference)
        for k, v in nf.params.items():
            if not torch.isfinite(v).all():
                raise FieldFileError(path, f"tensor {k!r} decodes to NaN or infinite values")
    nf.mask, nf.standalone = mask, mask is not None and storage["sparse"]["mask"] == "embedded"


def _field_header(path: Path, meta: dict) -> tuple[NeuralField, Field, dict[str, Any]]:
    """Everything of a .nf file but its values (params left empty), validated; with its storage entry."""
    _check_kind(meta, path, FORMAT)
    modality, shape, channels, rate = _signal_meta(meta, path)
    tiling = _tiling_meta(meta, path, shape)
    field_ = _field_meta(meta, path, shape if tiling is None else tiling.tile, channels)
    signal, coords, field_meta = meta["signal"], meta["coords"], meta["field"]  # each checked by now
    init = meta.get("init") or {"name": "random", "sha256": None}
    if not isinstance(init, dict) or not (init.get("sha256") is None or _SHA256.match(str(init.get("sha256")))):
        raise FieldFileError(path, "metadata field 'init' is malformed")
    bit_depth = signal.get("bit_depth", 8)
    storage = _storage_meta(meta, path)
    coding = storage["coding"]
    if coding is not None and meta["format_version"] >= 7:  # read on as earlier formats spell the table
        table = _coding_table(path, coding, field_, None if tiling is None else tiling.count(tuple(shape)))
        storage["coding"] = {**{k: v for k, v in coding.items() if k not in ("steps", "scales", "shapes")},
                             "tensors": table}
    nf = NeuralField(
        field_name=field_meta["name"],
        field_config=field_meta["config"],
        params={},
        modality=modality,
        shape=tuple(shape),
        channels=channels,
        bit_depth=bit_depth if bit_depth in (1, 8, 16, 32) else 8,
        source=signal.get("source") if isinstance(signal.get("source"), str) else None,
        source_bytes=signal.get("source_bytes") if type(signal.get("source_bytes")) is int else None,
        rate=rate,
        summary=meta.get("fit") if isinstance(meta.get("fit"), dict) else {},
        init=init,
        coords=coords,
        dtype=storage["dtype"],
        tiling=tiling,
    )
    nf.__dict__["field"] = field_  # already built: seed the cached property
    return nf, field_, storage


def read_field_header(path: str | Path) -> tuple[NeuralField, dict[str, Any]]:
    """A .nf file's description, needing no initialisation: the field (with its values when
    the file holds all they need; a sparse field whose mask is its initialisation's has
    empty ``params``), and ``{"format_version", "storage"}`` as the file declares them."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    nf, field_, storage = _field_header(path, meta)
    coding = storage["coding"]
    if coding is not None and coding["relative_to"] == "init":
        _coded_ints(path, tensors, coding, nf.n_params)  # the values need the initialisation: check what the file holds
    elif storage["sparse"] is None or storage["sparse"]["mask"] == "embedded":
        _read_values(path, nf, field_, tensors, storage, None)  # everything is in the file: validate all of it
    else:
        _check_sparse_values(path, field_, tensors, storage["sparse"], None if nf.tiling is None else nf.tiles)
    version = meta.get("nfit_version")
    return nf, {"format_version": meta["format_version"], "storage": storage,
                "nfit_version": version if isinstance(version, str) else None}


def _tiling_meta(meta: dict, path: Path, shape: tuple[int, ...]) -> Tiling | None:
    """The "tiling" entry, validated against the signal's grid; files before format version 3 have none."""
    entry = meta.get("tiling")
    if entry is None:
        return None
    ok = isinstance(entry, dict) and entry.get("layout") == LAYOUT and entry.get("blend") == BLEND
    tile, overlap = (entry.get("tile"), entry.get("overlap")) if ok else (None, None)
    for values in (tile, overlap):
        ok = ok and isinstance(values, list) and len(values) == len(shape) and all(
            type(v) is int and 0 <= v <= MAX_FIELD_SIZE for v in values)
    if not ok:
        raise FieldFileError(path, f"metadata field 'tiling' is malformed or of another layout ({_r(entry)})")
    try:
        tiling = Tiling(tuple(tile), tuple(overlap))
    except ValueError as err:
        raise FieldFileError(path, f"invalid tiling: {err}") from None
    if tiling.count(shape) > MAX_TILES:
        raise FieldFileError(path, f"declares {tiling.count(shape):,} tiles, over nfit's limit of {MAX_TILES:,}")
    return tiling


def _check_sparse_values(path: Path, field_: Field, tensors: dict[str, Tensor], sparse: dict[str, Any],
                         tiles: int | None) -> None:
    """What can be checked of a sparse field's values without its mask: names, biases, counts, finiteness."""
    shapes = field_.param_shapes()
    if set(tensors) != set(shapes):
        raise FieldFileError(path, "tensors do not match the field")
    lead = () if tiles is None else (tiles,)
    total = 0
    for name, shape in shapes.items():
        t = tensors[name]
        if name in prunable(shapes):
            ok = t.dim() == 1 + len(lead) and tuple(t.shape[:len(lead)]) == lead and t[(0,) * len(lead)].numel() <= math.prod(shape)
        else:
            ok = tuple(t.shape) == lead + tuple(shape)
        if not ok or not t.is_floating_point() or not torch.isfinite(t).all():
            raise FieldFileError(path, f"tensor {name!r} does not fit a sparse {shape} parameter")
        total += t.numel()
    if total != sparse.get("values"):
        raise FieldFileError(path, f"stores {total} values, its metadata says {_r(sparse.get('values'))}")


@dataclass
class MetaInit:
    """A learned initialisation: the starting point for few-step fitting."""

    field_name: str
    field_config: dict[str, Any]
    params: Params  # unbatched, float32, CPU
    modality: str
    shape: tuple[int, ...]  # the grid it was meta-trained on
    channels: int
    algo: dict[str, Any]  # {"name": ..., "config": {...}}
    test: dict[str, Any]  # test-time defaults: steps, lr, gamma
    data: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # steps, seeds, outer optimiser, validation PSNR
    coords: dict[str, Any] = field(default_factory=lambda: dict(CONVENTION))
    sha256: str | None = None  # of the file it was loaded from
    # A sparse initialisation (one level of Meta-SparseINR): the mask shared by every
    # signal fitted from it, and {"level", "rounds", "density", "prune", ...}.
    mask: Mask | None = None
    sparsity: dict[str, Any] | None = None
    rate: float | None = None  # audio: the sample rate it was trained at (signals are resampled to it)
    # A tile initialisation (``meta-train --tile``): ``shape`` is the tile, and signals fitted from it
    # are cut into tiles of this size and overlap.
    tiling: Tiling | None = None

    @property
    def n_values(self) -> int:
        """Values a field fitted from this initialisation stores (see :attr:`NeuralField.n_values`)."""
        return stored_values(count_params(self.field), self.mask)

    @cached_property
    def field(self) -> Field:
        """The field to fit with: masked when the initialisation is sparse."""
        base = build_field(self.field_name, self.field_config)
        return base if self.mask is None else Masked(base, self.mask)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": INIT_FORMAT,
            "format_version": INIT_FORMAT_VERSION,
            "nfit_version": __version__,
            "modality": self.modality,
            "signal": {"shape": list(self.shape), "channels": self.channels, "value_range": [0.0, 1.0],
                       "rate": self.rate},
            "coords": self.coords,
            "field": {"name": self.field_name, "config": self.field_config},
            "algo": self.algo,
            "test": self.test,
            "data": self.data,
            "train": self.train,
            **({} if self.mask is None else {"sparsity": self.sparsity}),
            **({} if self.tiling is None else {"tiling": self.tiling.to_json()}),
        }


def save_init(init: MetaInit, path: str | Path) -> str:
    """Write an init file atomically; returns its SHA-256."""
    tensors = {k: v.float() for k, v in init.params.items()}
    for k, m in (init.mask or {}).items():
        tensors[MASK_PREFIX + k] = m.bool()
    return file_sha256(write_safetensors(path, tensors, init.metadata()))


def _signal_meta(meta: dict, path: Path) -> tuple[str, tuple[int, ...], int, float | None]:
    """modality, grid shape, channels and rate (None for images) from the metadata, validated."""
    modality = _get(meta, path, "modality", str)
    if modality not in MODALITIES:
        raise FieldFileError(path, f"unknown modality {_r(modality)}")
    signal = _get(meta, path, "signal", dict)
    shape = signal.get("shape")
    channels = signal.get("channels")
    axes = MODALITIES[modality].axes
    if (
        not isinstance(shape, list)
        or len(shape) != len(axes)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        or math.prod(shape) > MAX_GRID_SAMPLES
    ):
        raise FieldFileError(path, f"signal shape {_r(shape)} is not a valid {modality} grid")
    if not isinstance(channels, int) or isinstance(channels, bool) or not 1 <= channels <= 4:
        raise FieldFileError(path, f"invalid channel count {_r(channels)}")
    coords = _get(meta, path, "coords", dict)
    if coords.get("name") != CONVENTION["name"]:
        raise FieldFileError(path, f"unknown coordinate convention {_r(coords.get('name'))}")
    rate = signal.get("rate")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e9):
        raise FieldFileError(path, f"invalid sample or frame rate {_r(rate)}")
    return modality, tuple(shape), channels, None if rate is None else float(rate)


def _field_meta(meta: dict, path: Path, shape: tuple[int, ...], channels: int) -> Field:
    field_meta = _get(meta, path, "field", dict)
    config = _get(field_meta, path, "config", dict)
    for key, value in config.items():
        # checked before building: a field's constructor allocates per layer, so a declared
        # depth of 10**9 would exhaust memory before any tensor could be compared (lists:
        # NeRV's strides and channels, one number per block); a field sized by its signal (a latent
        # grid's "size") may be as large as the signal, whose shape is checked already
        if key == "size" and value == list(shape):
            continue
        items = value if isinstance(value, list) and len(value) <= MAX_FIELD_SIZE else [value]
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) <= MAX_FIELD_SIZE for v in items):
            raise FieldFileError(path, f"field option {_r(key)} = {_r(value)} is out of range")
    if not isinstance(field_meta.get("name"), str):
        raise FieldFileError(path, "metadata field 'field' is missing or malformed")
    try:
        field_ = build_field(field_meta.get("name"), config)
    except ConfigError as err:
        raise FieldFileError(path, err.reason) from None
    mismatch = field_.grid_error(shape, channels)
    if mismatch:
        raise FieldFileError(path, mismatch)
    return field_


def _init_mask(path: Path, field_: Field, tensors: dict[str, Tensor], meta: dict) -> Mask | None:
    """The ``mask/<name>`` tensors of a sparse initialisation, validated (and removed from ``tensors``)."""
    found = {k[len(MASK_PREFIX):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(MASK_PREFIX)]}
    if not found and "sparsity" not in meta:
        return None
    shapes = field_.param_shapes()
    if set(found) != set(prunable(shapes)) or not isinstance(meta.get("sparsity"), dict):
        raise FieldFileError(path, "sparse initialisation: needs one mask per weight matrix and a 'sparsity' entry")
    for k, m in found.items():
        if m.dtype != torch.bool or tuple(m.shape) != tuple(shapes[k]):
            raise FieldFileError(path, f"mask of {k!r} must be bool {tuple(shapes[k])}, not {m.dtype} {tuple(m.shape)}")
    return {k: found[k] for k in prunable(shapes)}


def read_init(path: str | Path) -> MetaInit:
    """Read and validate an init file (run directories: :func:`nfit.runs.load_init`)."""
    path = Path(path)
    tensors, meta = read_safetensors(path)
    _check_kind(meta, path, INIT_FORMAT)
    modality, shape, channels, rate = _signal_meta(meta, path)
    field_ = _field_meta(meta, path, shape, channels)
    algo = _get(meta, path, "algo", dict)
    test = _get(meta, path, "test", dict)
    mask = _init_mask(path, field_, tensors, meta)
    params = check_params(path, field_, tensors)
    for k, m in (mask or {}).items():
        if params[k][~m].any():
            raise FieldFileError(path, f"weights of {k!r} outside its mask are not zero")
    init = MetaInit(
        field_name=meta["field"]["name"],
        field_config=meta["field"]["config"],
        params=params,
        modality=modality,
        shape=shape,
        channels=channels,
        algo=algo,
        test=test,
        data=meta.get("data") if isinstance(meta.get("data"), dict) else {},
        train=meta.get("train") if isinstance(meta.get("train"), dict) else {},
        coords=meta["coords"],
        sha256=file_sha256(path),
        mask=mask,
        sparsity=meta.get("sparsity") if mask is not None else None,
        rate=rate,
        tiling=_tiling_meta(meta, path, shape),
    )
    if mask is None:
        init.__dict__["field"] = field_
    return init


def read_metadata(path: Path) -> str:
    """The nfit JSON text of a file (plain or packed), unchecked; "{}" when it has none."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            entries = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise FieldFileError(path, f"corrupt safetensors data ({_short(err)})") from None
    text = _meta_text(entries, Path(path), FieldFileError)
    return "{}" if text is None else text
