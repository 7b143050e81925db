"""The run directory of ``nfit meta-train``: its files, their names, and reading a run.

    RUN/
      run.json                  the configuration (resuming reads it back)
      metrics.jsonl             one JSON object per logged step and per validation
      checkpoint.safetensors    theta_0, Adam's moments, RNG state; metadata: step, ...
      checkpoint.json           the same metadata and the SHA-256 of checkpoint.safetensors, for people
      init.safetensors          the result: the learned initialisation (see nfit.fieldfile)
      levels/level-KK.safetensors   --algo sparse: the initialisation after round KK (its own mask)
      preview.png               validation signals (top) and their reconstructions after K_test steps
      tb/                       TensorBoard events, when tensorboard is installed

This module owns those names and the files' formats: :mod:`nfit.train` decides
when to write them, and everything that reads a run (``nfit fit --init RUN``,
``nfit eval``, ``nfit info``, ``--resume``) comes here. A run directory stands for
its result, or for one of its levels (:func:`load_init`).

Faults. Every file is written atomically (nfit.atomic), so a kill at any instant
leaves each file whole: the new version or the previous one. Resuming reads only
checkpoint.safetensors, which carries its own metadata; checkpoint.json is a copy
that a kill between the two renames can leave one checkpoint behind, so it records
the SHA-256 of the checkpoint it describes and resuming rewrites it when it does
not match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfit._version import __version__
from nfit.atomic import atomic_output, same_file, stale_temporaries
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.errors import ConfigError, FieldFileError, OutputError
from nfit.fieldfile import (
    MASK_PREFIX,
    META_KEY,
    MetaInit,
    file_sha256,
    read_init,
    read_metadata,
    read_safetensors,
    save_tensors,
)
from nfit.fields import Params
from nfit.fields.masked import Mask
from nfit.signals import MODALITIES
from nfit.signals.image import quantize, write_image

RUN_FILE = "run.json"
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_FORMAT = "nfit-checkpoint"
INIT_FILE = "init.safetensors"
LOG_FILE = "metrics.jsonl"
PREVIEW = "preview.png"
PSNR_PLOT = "psnr.png"  # validation PSNR against outer steps, when matplotlib is installed
FILE_INDEX = "files.json"  # the data folder as listed when the run began: --resume reads it, never lists again
LEVELS_DIR = "levels"  # a sparse run's levels: levels/level-KK.safetensors
RUN_NAMES = (RUN_FILE, CHECKPOINT, CHECKPOINT_JSON, INIT_FILE, LOG_FILE, PREVIEW, PSNR_PLOT, FILE_INDEX, LEVELS_DIR, "tb")


def level_file(run: Path, level: int) -> Path:
    """Where a sparse run keeps its initialisation after round ``level`` (0: the dense start)."""
    return Path(run) / LEVELS_DIR / f"level-{level:02d}.safetensors"


# ---------------------------------------------------------------------------- reading a run's initialisation


def load_init(path: str | Path, density: float | None = None) -> MetaInit:
    """An initialisation: an init file, a run directory (its result), or with ``density`` the
    level of a sparse run whose density is nearest to it."""
    path = Path(path)
    if density is not None:
        path = level_path(path, density)
    elif path.is_dir() and (path / INIT_FILE).is_file():
        path = path / INIT_FILE
    return read_init(path)


def level_files(run: Path) -> list[tuple[float, Path]]:
    """(density, file) of every level of a sparse run, densest first."""
    levels = []
    for f in sorted((Path(run) / LEVELS_DIR).glob("level-*.safetensors")):
        try:
            sparsity = json.loads(read_metadata(f)).get("sparsity") or {}
            levels.append((float(sparsity["density"]), f))
        except (KeyError, TypeError, ValueError):
            raise FieldFileError(f, "not a level of a sparse run (no readable 'sparsity' metadata)") from None
    return sorted(levels, key=lambda t: -t[0])


def level_path(run: Path, wanted: float) -> Path:
    """The level of a sparse run whose density is nearest to ``wanted`` (on a log scale: 0.1 is as far from 0.2 as from 0.05)."""
    if not 0 < wanted <= 1:
        raise ConfigError("--density", "must be in (0, 1]")
    if not run.is_dir():
        raise ConfigError("--density", f"{run} is a file: give a sparse run directory to choose a level from")
    levels = level_files(run)
    if not levels:
        raise ConfigError("--density", f"{run} is not a sparse run (no {LEVELS_DIR}/): train one with --algo sparse")
    return min(levels, key=lambda t: abs(math.log(t[0] / wanted)))[1]


def find_init(path: str | Path, sha256: str) -> MetaInit:
    """The initialisation with this SHA-256: the file ``path``, or any level (or the result) of the run ``path``."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "init.safetensors", *(f for _, f in level_files(path))]
        for f in candidates:
            if f.is_file() and file_sha256(f) == sha256:
                return read_init(f)
        raise FieldFileError(path, f"no initialisation in this run has sha256 {sha256}")
    return read_init(path)


# ---------------------------------------------------------------------------- the configuration


@dataclass
class RunSpec:
    """Everything that defines a run; written to run.json and read back by --resume."""

    data: str
    val_dir: str | None
    train: TrainConfig
    data_config: DataConfig
    field: FieldOptions
    algo_options: dict[str, Any]
    init_from: dict[str, str] | None = None  # --algo sparse: {"path", "sha256"} of the dense initialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "nfit_version": __version__,
            "data": self.data,
            "val_dir": self.val_dir,
            "train": dataclasses.asdict(self.train),
            "data_config": dataclasses.asdict(self.data_config),
            "field": dataclasses.asdict(self.field),
            "algo_options": self.algo_options,
            "from": self.init_from,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RunSpec:
        return cls(
            raw["data"],
            raw.get("val_dir"),
            TrainConfig(**raw["train"]),
            DataConfig(**raw["data_config"]),
            FieldOptions(**raw["field"]),
            raw.get("algo_options") or {},
            raw.get("from"),
        )


def read_run(run: Path) -> RunSpec:
    """The configuration of an existing run directory (for --resume)."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise ConfigError(run, f"not an nfit run directory (no {RUN_FILE})")
    try:
        return RunSpec.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(path, f"unreadable run configuration ({err})") from None


def write_run(run: Path, spec: RunSpec) -> None:
    write_json(run / RUN_FILE, spec.to_json())


def check_run_dir(run: Path, inputs: list[str | Path | None], force: bool) -> bool:
    """Refuse a run directory that would harm what is there; returns whether it holds a run that
    stopped before its first checkpoint (nothing to lose: it starts again)."""
    if run.exists() and not run.is_dir():
        raise ConfigError(run, "exists and is not a directory")
    existing = next(p for p in (run, *run.absolute().parents) if p.exists())  # checked now, created later
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OutputError(run, f"cannot create folder ({existing} is not a writable folder)")
    for folder in (Path(f) for f in inputs if f is not None):
        if same_file(run, folder) or folder.resolve() in run.resolve().parents:
            raise ConfigError(run, f"is inside the data folder {str(folder)!r}: its files (preview.png) would become "
                                   "training data; choose a run directory elsewhere")
    if (run / RUN_FILE).exists():
        if (run / CHECKPOINT).exists():
            raise ConfigError(run, "already holds a run: continue it with --resume, or choose another -o")
        return True
    taken = [name for name in RUN_NAMES if (run / name).exists()]
    if taken and not force:
        raise ConfigError(run, f"holds files that are not an nfit run ({', '.join(taken)}), which a run would replace: "
                               "choose another -o, or give --force")
    return False


def files_digest(files: list[Path], root: Path) -> str:
    """A short digest of the training files' names, relative to the data folder: a resumed run checks it."""
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
    return h.hexdigest()[:16]




# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(run: Path, step: int, theta: Params, adam: dict[str, dict[str, Any]], extra: dict[str, Any],
                    mask: Mask | None) -> None:
    """theta_0, Adam's state per parameter name, the CPU RNG state and the mask, with ``extra`` as metadata;
    then checkpoint.json, a copy of the metadata with the checkpoint's SHA-256."""
    tensors: dict[str, Tensor] = {MASK_PREFIX + k: m.cpu() for k, m in (mask or {}).items()}
    for name, value in theta.items():
        tensors[f"theta/{name}"] = value.detach().cpu().contiguous()
        state = adam.get(name, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"adam/{name}/{key}"] = state[key].detach().cpu().contiguous()
        if "step" in state:
            tensors[f"adam/{name}/step"] = torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu()
    tensors["rng/cpu"] = torch.get_rng_state()
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "nfit_version": __version__, **extra}
    with atomic_output(run / CHECKPOINT) as tmp:
        save_tensors(run / CHECKPOINT, tmp, tensors, {META_KEY: json.dumps(meta)})
    write_json(run / CHECKPOINT_JSON, {**meta, "sha256": file_sha256(run / CHECKPOINT)})


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` read: theta_0, Adam's state and the mask by parameter name, the RNG state, the metadata."""

    theta: Params
    adam: dict[str, dict[str, Tensor]]
    mask: Mask
    rng: Tensor
    meta: dict[str, Any]


def load_checkpoint(run: Path, names: list[str], mask_names: list[str]) -> Checkpoint:
    """Read RUN/checkpoint.safetensors for parameters ``names`` (and masks ``mask_names``); a
    missing tensor is a FieldFileError saying the checkpoint does not match the run."""
    path = run / CHECKPOINT
    tensors, meta = read_safetensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise FieldFileError(path, "not an nfit checkpoint")
    try:
        theta = {n: tensors[f"theta/{n}"] for n in names}
        adam = {n: {"step": tensors[f"adam/{n}/step"].reshape(()).clone(), "exp_avg": tensors[f"adam/{n}/exp_avg"],
                    "exp_avg_sq": tensors[f"adam/{n}/exp_avg_sq"]} for n in names if f"adam/{n}/exp_avg" in tensors}
        mask = {k: tensors[MASK_PREFIX + k] for k in mask_names}
        return Checkpoint(theta, adam, mask, tensors["rng/cpu"], meta)
    except KeyError as err:
        raise FieldFileError(path, f"checkpoint does not match this run ({err})") from None


def repair_checkpoint_json(run: Path, meta: dict[str, Any]) -> None:
    """Rewrite checkpoint.json when a kill between the two renames left it describing an older checkpoint."""
    sha = file_sha256(run / CHECKPOINT)
    try:
        current = json.loads((run / CHECKPOINT_JSON).read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        current = None
    if current != sha:
        write_json(run / CHECKPOINT_JSON, {**meta, "sha256": sha})


def remove_stale_temporaries(run: Path) -> None:
    """Temporaries a killed run left (see nfit.atomic.stale_temporaries); only ours, by exact name."""
    for name in (CHECKPOINT, CHECKPOINT_JSON, INIT_FILE, RUN_FILE, LOG_FILE, PREVIEW, PSNR_PLOT, FILE_INDEX):
        for tmp in stale_temporaries(run / name):
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- logs and pictures


class MetricsLog:
    """metrics.jsonl (and TensorBoard when installed), written by rank 0 only."""

    def __init__(self, run: Path, start_step: int):
        self.path = run / LOG_FILE
        if self.path.exists():  # resuming: drop what was logged after the checkpoint
            kept = [ln for ln in self.path.read_text().splitlines() if _logged_step(ln) <= start_step]
            write_text(self.path, "".join(ln + "\n" for ln in kept))
        self.file = open(self.path, "a")
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tb"), purge_step=start_step or None)
        except ImportError:
            pass

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        try:
            self.file.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
            self.file.flush()
        except OSError as err:  # a full disk: say which file, like every other write
            raise OutputError(self.path, f"cannot write ({err.strerror or err})") from None
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # the buffer was flushed after every line; a failure was reported then
            pass
        if self.tb is not None:
            self.tb.close()


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def write_preview(path: Path, modality: str, targets: Tensor, recon: Tensor) -> None:
    """Targets on the top row, reconstructions below: [n, *shape, C] each -> one PNG of one
    picture per signal (an image, a video's middle frame); nothing for audio."""
    picture = MODALITIES[modality].picture
    if picture(targets[0].numpy()) is None:
        return
    top = [torch.as_tensor(picture(t.numpy())) for t in targets]  # [H, W, C] each
    bottom = [torch.as_tensor(picture(r.numpy())) for r in recon]
    grid = torch.cat([torch.cat(top, dim=1), torch.cat(bottom, dim=1)], dim=0)  # [2H, nW, C]
    with atomic_output(path) as tmp:
        write_image(tmp, quantize(grid.numpy(), 8), "png")


def logged(run: Path, kind: str) -> list[dict[str, Any]]:
    """The metrics.jsonl rows of one kind ("train", "val", "round"); a line cut short by a kill is skipped."""
    rows = []
    path = Path(run) / LOG_FILE
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("kind") == kind:
            rows.append(row)
    return rows


def write_psnr_plot(run: Path) -> Path | None:
    """RUN/psnr.png: validation PSNR against outer steps, after 0 and after K_test test-time steps.
    Drawn with matplotlib, an optional dependency (``pip install nfit[plot]``): None without it."""
    try:
        import matplotlib  # optional: nfit[plot]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    rows = logged(run, "val")
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(steps, [r["val_psnr"] for r in rows], marker="o", label="after K_test steps")
    ax.plot(steps, [r["val_psnr_step0"] for r in rows], marker=".", linestyle="--", label="at the initialisation")
    ax.set(xlabel="outer step", ylabel="validation PSNR (dB)", title=Path(run).name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = Path(run) / PSNR_PLOT
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


def summarize_run(run: Path) -> dict[str, Any]:
    """What a person asks of a run directory: how far it got, how fast, its best validation, its last
    checkpoint (all from its own files; no tensor is read)."""
    run = Path(run)
    spec = read_run(run)
    ckpt: dict[str, Any] = {}
    if (run / CHECKPOINT_JSON).is_file():
        try:
            ckpt = json.loads((run / CHECKPOINT_JSON).read_text())
        except ValueError:
            ckpt = {}
    step = int(ckpt.get("step", 0))
    seconds = float(ckpt.get("seconds", 0.0))
    vals = logged(run, "val")
    best = max(vals, key=lambda r: r["val_psnr"], default=None)
    written = (run / CHECKPOINT).stat().st_mtime if (run / CHECKPOINT).is_file() else None
    return {
        "algo": spec.train.algo,
        "steps": step,
        "target_steps": spec.train.steps,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / step, 3) if step else None,
        "last_checkpoint": None if written is None else {
            "step": step, "written": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written))},
        "best_val": None if best is None else {"psnr": best["val_psnr"], "step": best["step"]},
        "last_val": None if not vals else {"psnr": vals[-1]["val_psnr"], "step": vals[-1]["step"]},
        "data": spec.data,
        "plot": str(run / PSNR_PLOT) if (run / PSNR_PLOT).is_file() else None,
    }


@dataclass
class FileIndex:
    """A data folder's listing: its modality and files (relative to ``root``), and a validation folder's."""

    root: str
    modality: str
    files: list[str]
    val_root: str | None = None
    val_files: list[str] | None = None
    # Modification times (ns) of every folder that holds a listed file: adding, removing or renaming a
    # file changes its folder's, so a stat per folder (1001 for ImageNet) tells whether the listing holds.
    folders: dict[str, int] | None = None

    def stamp(self) -> FileIndex:
        """Record the folders' modification times now."""
        self.folders = _folder_times(self)
        return self

    def still_valid(self) -> bool:
        return self.folders is not None and _folder_times(self) == self.folders

    def paths(self) -> tuple[list[Path], list[Path] | None]:
        val = None if self.val_files is None else [Path(self.val_root, f) for f in self.val_files]
        return [Path(self.root, f) for f in self.files], val


def _folder_times(index: FileIndex) -> dict[str, int] | None:
    # strings, not Paths: a million pathlib objects would cost seconds
    folders = {os.path.join(index.root, os.path.dirname(f)) for f in index.files} | {os.path.join(index.root, "")}
    if index.val_root is not None:
        folders |= {os.path.join(index.val_root, os.path.dirname(f)) for f in index.val_files or []}
        folders.add(os.path.join(index.val_root, ""))
    try:
        return {d: os.stat(d).st_mtime_ns for d in sorted(folders)}
    except OSError:  # a folder is gone: the listing does not hold
        return None


def write_file_index(run: Path, index: FileIndex) -> None:
    """RUN/files.json, with the SHA-256 of its own content so that a damaged copy is never trusted."""
    body = dataclasses.asdict(index)
    text = json.dumps(body, separators=(",", ":"))
    write_text(Path(run) / FILE_INDEX, json.dumps({"sha256": hashlib.sha256(text.encode()).hexdigest(), "index": body},
                                                  separators=(",", ":")) + "\n")


def read_file_index(run: Path, root: str, val_root: str | None) -> FileIndex | None:
    """The listing a run began with, if RUN/files.json is there, whole, of the same folders, and none of
    those folders changed since (else None: list them again, and the run's own check then says whether the
    data changed). Reading 1.28 M names takes seconds; listing them, about 20 on this machine."""
    path = Path(run) / FILE_INDEX
    try:
        raw = json.loads(path.read_text())
        body = raw["index"]
        if hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest() != raw["sha256"]:
            return None
        index = FileIndex(**body)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same_folders = (index.root, index.val_root) == (str(root), None if val_root is None else str(val_root))
    return index if same_folders and index.still_valid() else None
