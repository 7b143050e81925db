"""Folders of media files -> batches of equally sized targets for meta-learning.

Meta-learning fits one shared initialisation to many signals, so every signal in a
batch must have the same grid: images are converted to a fixed channel count,
resized so the shorter side is ``res`` and centre-cropped to ``res x res``; audio
is resampled and cropped or padded to a fixed duration; video clips keep a fixed
number of frames, centre-cropped and resized like images.

Batch order is a pure function of (dataset size, batch size, seed, step), so a run
resumed at step ``s`` sees exactly the batches the uninterrupted run would have, and
every rank of a multi-process run can compute its own slice without talking to the
others. Bad files never crash a worker: they come back as a one-line reason, are
warned about once and dropped from the batch (or stop the run with ``strict``).

Modality-specific code (decoding and conforming: resizing, cropping, channels)
lives with each modality in :mod:`nfit.signals` (its ``load``); this module only
sees files and tensors.
"""

from __future__ import annotations

import os
import random
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from nfit.config import TILE_CACHE_BYTES, SignalOptions
from nfit.errors import ConfigError, InputError
from nfit.signals import EXTENSIONS, MODALITIES, image, modality_for
from nfit.signals.image import convert_channels, decode_image, load_image  # noqa: F401  (the old home of these names)
from nfit.tiling import pad_to_tile

Item = tuple[int, torch.Tensor | None, str | None]
Warn = Callable[[str], None]

SEED_STRIDE = 1_000_003  # seed * stride + epoch: distinct seeds never share an epoch's permutation
GUESS_TRIES = 8


# ---------------------------------------------------------------------------- files


def sort_paths(paths: list[Path]) -> list[Path]:
    """``sorted(paths)``, twice as fast: the same order (a PosixPath compares its parts), but each
    path's parts are taken once instead of at every comparison."""
    return sorted(paths, key=lambda p: p.parts)


def scan_folder(root: Path, extensions: tuple[str, ...] = image.READ_EXTENSIONS) -> list[Path]:
    """Every file under ``root`` (recursively) whose extension is in ``extensions``, any case.

    Hidden files and folders (names starting with ".") are skipped so that ``.git``,
    ``.DS_Store`` and editor droppings never become training data. The result is
    sorted so that splits and batch order depend only on the folder's contents.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "no such directory")
    if not root.is_dir():
        raise InputError(root, "is a file, not a folder")
    wanted = {e.lower() for e in extensions}
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune: never descend into hidden folders
        found.extend(
            Path(folder, n) for n in names if not n.startswith(".") and os.path.splitext(n)[1].lower() in wanted
        )
    if not found:
        named = {tuple(m.extensions): m.name for m in MODALITIES.values()} | {EXTENSIONS: "media"}
        kind = named.get(tuple(extensions), "matching")
        raise InputError(root, f"no {kind} files found (looked for {', '.join(extensions)})")
    return sort_paths(found)


def scan_media(root: Path, modality: str | None = None) -> tuple[str, list[Path]]:
    """The modality of a folder and its files of that modality (recursively, sorted).

    Without ``modality`` the folder must hold files of exactly one modality; a folder
    mixing, say, photos and sound clips is an error that says how many of each.
    """
    if modality is not None:
        if modality not in MODALITIES:
            raise ConfigError("--modality", f"unknown modality {modality!r} (known: {', '.join(MODALITIES)})")
        return modality, scan_folder(root, MODALITIES[modality].extensions)
    by_modality: dict[str, list[Path]] = {}
    for f in scan_folder(root, EXTENSIONS):
        by_modality.setdefault(modality_for(f).name, []).append(f)
    if len(by_modality) > 1:
        counts = ", ".join(f"{len(v)} {k}" for k, v in by_modality.items())
        raise InputError(root, f"holds files of several modalities ({counts}): choose one with --modality")
    ((name, found),) = by_modality.items()
    return name, found


def split_files(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Deterministic (train, val) split, each sorted.

    The shuffle starts from the sorted list, so the split depends on the set of files
    and the seed, not on the order they were listed in. A positive fraction always
    yields at least one validation file (when there are two or more), and training
    always keeps at least one.
    """
    if not 0.0 <= val_fraction < 1.0:  # also rejects NaN
        raise ConfigError("--val-fraction", "must be in [0, 1)")
    shuffled = sort_paths(files)
    random.Random(seed).shuffle(shuffled)
    n = len(shuffled)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    return sort_paths(shuffled[n_val:]), sort_paths(shuffled[:n_val])


# ---------------------------------------------------------------------------- batch order


def batch_indices(n: int, batch: int, seed: int, step: int) -> list[int]:
    """Dataset indices of the global batch for outer step ``step`` (0-based).

    The stream of indices is the concatenation of epochs, epoch ``e`` being
    ``randperm(n)`` seeded with ``seed * 1_000_003 + e``; step ``s`` takes positions
    ``s * batch`` to ``s * batch + batch - 1``. Only the epochs the batch touches are
    generated, so this is cheap at any step and exactly reproducible on resume.
    """
    if n < 1:
        raise ValueError(f"cannot draw batches from {n} files")
    if batch < 1:
        raise ConfigError("--batch-size", "must be at least 1")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    start = step * batch
    perms: dict[int, list[int]] = {}
    out = []
    for pos in range(start, start + batch):
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed((seed * SEED_STRIDE + epoch) % (1 << 64))  # torch takes uint64
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(perms[epoch][offset])
    return out


def rank_slice(indices: list[int], rank: int, world: int) -> list[int]:
    """This rank's contiguous share of a global batch; the ranks' shares concatenate to it."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    b = len(indices)
    if b % world:
        raise ConfigError("--batch-size", f"global batch {b} is not divisible by {world} processes")
    k = b // world
    return list(indices[rank * k : (rank + 1) * k])


# ---------------------------------------------------------------------------- decoding


def guess_channels(files: list[Path], modality: str = "image") -> int:
    """The channels a dataset is conformed to, judged by the first readable file (sorted order):
    images 1 if greyscale, else 3; audio its channel count (1 or 2); video 3.

    Reads at most 8 files so that a folder with a few broken files still gets a guess
    without decoding the whole dataset.
    """
    if not files:
        raise InputError(None, f"no {modality} files to guess the channel count from")
    tried = sort_paths(files)[:GUESS_TRIES]
    first: InputError | None = None
    for path in tried:
        try:
            return MODALITIES[modality].guess_channels(path)
        except InputError as err:
            first = first or err
    assert first is not None
    more = f" (nor could the next {len(tried) - 1} files)" if len(tried) > 1 else ""
    raise InputError(first.where, first.reason + more)


# ---------------------------------------------------------------------------- datasets


def as_paths(files: list[Path] | list[str]) -> list[Path]:
    """Paths of ``files``, the Paths among them as they are: Path(a Path) parses it again, 16 us a
    file in a micro-benchmark (about 20 s of a start on ImageNet's 1.28 M)."""
    return [f if isinstance(f, Path) else Path(f) for f in files]


class SignalFolder(torch.utils.data.Dataset):
    """Files decoded on demand to one grid (``opts``: its modality and sizes) as float32
    ``[*shape, channels]``; a bad file yields a reason, not an exception.

    Decoding runs in DataLoader workers, where an exception would kill the whole
    run; returning the reason lets the main process warn once and carry on.
    """

    def __init__(self, files: list[Path], opts: SignalOptions, channels: int):
        self.files = as_paths(files)
        self.opts = opts
        self.modality = MODALITIES[opts.modality]
        self.channels = channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        try:
            return i, self.modality.load(self.files[i], self.opts, self.channels), None
        except InputError as err:
            return i, None, err.reason
        except OSError as err:
            return i, None, f"cannot read ({type(err).__name__}: {err.strerror or err})"


class ImageFolder(SignalFolder):
    """Images as ``[res, res, channels]``."""

    def __init__(self, files: list[Path], res: int, channels: int):
        super().__init__(files, SignalOptions("image", res=res), channels)


class TileFolder(torch.utils.data.Dataset):
    """One random tile of a file, at the file's own scale (never resized, so the tiles an
    initialisation learns from look like the tiles it will fit): ``[*tile, channels]``.

    Keys are ``(file index, draw)``: the draw seeds where the tile is cut, so a batch is a pure
    function of its keys (resume and every rank agree). A plain index (validation) is its own
    draw. ``opts`` say how files are read: audio at its sample rate, video's first frames.
    A file shorter than a tile along an axis has its last sample repeated, as in fitting.
    """

    def __init__(self, files: list[Path], opts: SignalOptions, channels: int, tile: tuple[int, ...],
                 cache_bytes: int = TILE_CACHE_BYTES):
        self.files = as_paths(files)
        self.opts, self.channels, self.tile = opts, channels, tile
        self.modality = MODALITIES[opts.modality]
        # Decoding a whole photo for one small tile costs more than the step that uses it: each
        # worker keeps the files it decoded, up to cache_bytes (a data set that fits is decoded once).
        self.cache: OrderedDict[int, Tensor] = OrderedDict()
        self.cache_bytes, self.cached = cache_bytes, 0

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> Tensor:
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        values = self.modality.load_whole(self.files[i], self.opts, self.channels)  # [*shape, C]
        size = values.numel() * values.element_size()
        if size <= self.cache_bytes:
            while self.cached + size > self.cache_bytes:
                self.cached -= self.cache.popitem(last=False)[1].nbytes
            self.cache[i], self.cached = values, self.cached + size
        return values

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        i, draw = key if isinstance(key, tuple) else (key, key)
        try:
            values = self._load(i)
        except InputError as err:
            return i, None, err.reason
        except OSError as err:
            return i, None, f"cannot read ({type(err).__name__}: {err.strerror or err})"
        generator = torch.Generator().manual_seed(draw)
        origin = [int(torch.randint(0, max(1, n - t + 1), (1,), generator=generator)) for n, t in
                  zip(values.shape[:-1], self.tile)]
        return i, random_tile(values, self.tile, origin), None


def random_tile(values: Tensor, tile: tuple[int, ...], origin: list[int]) -> Tensor:
    """The tile at ``origin`` of ``values [*shape, C]``, the last sample repeated where an axis is short."""
    values = pad_to_tile(values, tile)
    return values[tuple(slice(o, o + t) for o, t in zip(origin, tile))].contiguous()


def tile_draw(seed: int, step: int, slot: int) -> int:
    """The seed of where the ``slot``-th tile of a step's global batch is cut."""
    return ((seed * SEED_STRIDE + step) * 65_537 + slot) % (1 << 62)


def collate(items: list[Item]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Stack the decoded items; report the bad ones as (index, reason) instead of failing the batch."""
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, reason) for i, t, reason in items if t is None]
    targets = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], targets, bad


def _report(dataset: SignalFolder, bad: list[tuple[int, str]], seen: dict[Path, str], strict: bool, warn: Warn) -> None:
    """Warn once per bad file and remember it; with ``strict`` the first bad file is fatal."""
    for i, reason in bad:
        path = dataset.files[i]
        first = path not in seen
        seen[path] = reason
        if strict:
            raise InputError(path, reason)
        if first:
            warn(f"{path}: {reason}")


def _default_warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


class _StepSampler(torch.utils.data.Sampler):
    """This rank's slice of each step's global batch, for steps start..steps-1; with ``draws``,
    each index comes with the seed of its tile (:class:`TileFolder`)."""

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int, steps: int, rank: int, world: int,
                 draws: bool = False):
        self.args = (n, global_batch, seed)
        self.start_step, self.steps, self.rank, self.world, self.draws = start_step, steps, rank, world, draws

    def __iter__(self) -> Iterator[list]:
        for step in range(self.start_step, self.steps):
            keys: list = batch_indices(*self.args, step)
            if self.draws:
                keys = [(i, tile_draw(self.args[2], step, slot)) for slot, i in enumerate(keys)]
            yield rank_slice(keys, self.rank, self.world)

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)


class BatchStream:
    """Training targets for steps ``start_step .. steps-1``: iterate to get ``(step, targets)``.

    Targets are float32 ``[b, *shape, C]`` on the CPU (pinned with ``pin``); ``b`` is this
    rank's share of the global batch minus any files that failed to decode. A step whose
    files all failed yields nothing. ``bad`` maps each failed file to its reason and
    ``loaded`` counts successful decodes.
    """

    def __init__(
        self,
        dataset: SignalFolder | TileFolder,
        global_batch: int,
        seed: int,
        start_step: int,
        steps: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        pin: bool = False,
        strict: bool = False,
        warn: Warn | None = None,
    ):
        if len(dataset) < 1:
            raise ValueError("cannot stream batches from an empty dataset")
        if global_batch < 1:
            raise ConfigError("--batch-size", "must be at least 1")
        rank_slice(list(range(global_batch)), rank, world)  # fail now, not in the first step
        self.dataset = dataset
        self.start_step, self.steps = start_step, steps
        self.strict = strict
        self.warn: Warn = warn or _default_warn
        self.bad: dict[Path, str] = {}
        self.loaded = 0
        sampler = _StepSampler(len(dataset), global_batch, seed, start_step, steps, rank, world,
                               draws=isinstance(dataset, TileFolder))
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers else None,
        )

    def __len__(self) -> int:
        """Number of steps covered (steps whose files all fail are still counted)."""
        return max(self.steps - self.start_step, 0)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        # The DataLoader returns batches in sampler order (workers included), so zip recovers the step.
        for step, (kept, targets, bad) in zip(range(self.start_step, self.steps), self.loader):
            _report(self.dataset, bad, self.bad, self.strict, self.warn)
            self.loaded += len(kept)
            if targets is not None:
                yield step, targets


def load_all(
    dataset: SignalFolder, indices: list[int], strict: bool, warn: Warn | None
) -> tuple[list[int], torch.Tensor]:
    """Decode ``indices`` in this process (the validation set) with the same bad-file rules.

    Returns the indices that decoded and their stacked ``[b, *shape, C]`` targets.
    """
    warn = warn or _default_warn
    kept, targets, bad = collate([dataset[i] for i in indices])
    _report(dataset, bad, {}, strict, warn)
    if targets is None:
        raise InputError(dataset.files[indices[0]] if indices else None, "no readable validation files")
    return kept, targets


# ---------------------------------------------------------------------------- summary


@dataclass
class DataSummary:
    """What a dataset run used, for the run's JSON summary and log line."""

    root: str
    files: int
    train: int
    val: int
    res: int | None
    channels: int
    bad: int
    modality: str = "image"
    shape: list[int] | None = None  # the grid every signal was conformed to
    rate: float | None = None  # audio: the sample rate clips were resampled to
    tile: list[int] | None = None  # tiles: their size; signals are sampled at their own scale (``res`` is None)

    def to_json(self) -> dict:
        return asdict(self)


__all__ = [
    "BatchStream",
    "DataSummary",
    "ImageFolder",
    "SignalFolder",
    "TileFolder",
    "convert_channels",
    "decode_image",
    "batch_indices",
    "collate",
    "guess_channels",
    "load_all",
    "load_image",
    "rank_slice",
    "scan_folder",
    "scan_media",
    "split_files",
]
