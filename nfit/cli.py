"""The `nfit` command. The only module that imports typer and rich.

Each command parses its options, calls one library function and prints. Errors a
user can cause (:class:`nfit.errors.NfitError`) become one line on stderr and
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from nfit._version import __version__
from nfit.config import (
    DEFAULT_RES,
    AdaptConfig,
    DataConfig,
    FieldOptions,
    FitConfig,
    RenderConfig,
    SignalOptions,
    StoreConfig,
    TrainConfig,
)
from nfit.device import flush_denormals
from nfit.errors import ConfigError, NfitError, NfitWarning
from nfit.fields import FIELDS, SirenConfig
from nfit.meta.sparse import SparseConfig

app = typer.Typer(
    help="Turn media files into neural fields, and back.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; markup would swallow it
)
out = Console()
err = Console(stderr=True)
_state: dict[str, Any] = {"debug": False, "warned": set()}

FIELD_HELP = f"Field: {', '.join(sorted(FIELDS))}."
FIELD_CONFIG_HELP = """Other options of the field's config as JSON, e.g. '{"strides": [2, 2], "channels": [32, 16]}' for nerv."""


def _field_options(field: str, width, depth, w0, config: Optional[str]) -> FieldOptions:
    extra = None
    if config is not None:
        try:
            extra = json.loads(config)
        except json.JSONDecodeError as e:
            raise ConfigError("--field-config", f"is not JSON ({e.msg})") from None
        if not isinstance(extra, dict):
            raise ConfigError("--field-config", "must be a JSON object")
    return FieldOptions(field, width, depth, w0, extra)
_MODALITY_HELP = "image, audio or video [default: from the file extensions]."

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 3  # many files: some failed, every other one was written


def _version(value: bool) -> None:
    if value:
        print(f"nfit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (nfit.errors.NfitWarning and others) as one line each, each said once."""
    text = str(message)
    if text not in _state["warned"]:
        _state["warned"].add(text)
        err.print(f"nfit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


def _run(job: Callable[[], Any]) -> Any:
    """Run a library call; turn nfit errors (and Ctrl-C) into one line and an exit code.

    An OSError that names a file (a read-only folder, a path through a file) is about a
    path the user gave: one line and exit code 2, like every other bad path."""
    _state["warned"] = set()  # each warning once per command
    try:
        with warnings.catch_warnings(), flush_denormals():
            warnings.simplefilter("always", NfitWarning)
            warnings.showwarning = _show_warning
            return job()
    except NfitError as e:
        if _state["debug"]:
            raise
        err.print(f"nfit: error: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except OSError as e:
        if _state["debug"]:
            raise
        if e.filename is None:
            _internal_error(e)
        err.print(f"nfit: error: {e.filename}: {e.strerror or e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        err.print("nfit: interrupted", markup=False)
        raise typer.Exit(130) from None
    except Exception as e:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        _internal_error(e)


def _internal_error(e: Exception) -> None:
    err.print(f"nfit: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


# ---------------------------------------------------------------------------- progress

PLAIN_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal (a log file, nohup)
RATE_SMOOTHING = 0.1  # weight of the newest step in the smoothed seconds per step
RENDER_BAR_AFTER = 1.0  # seconds a render runs before it shows a bar


def _duration(seconds: float | None) -> str:
    """42 s, 3 min 05 s, 2 h 04 min, 9 d 12 h."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def _rate_text(seconds_per_step: float | None, unit: str = "step") -> str:
    """Steps per second at 1/s and above, else seconds per step: never "0.0 step/s"."""
    if not seconds_per_step or not math.isfinite(seconds_per_step):
        return ""
    per_second = 1.0 / seconds_per_step
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s" if per_second < 100 else f"{per_second:.0f} {unit}/s"
    return f"{seconds_per_step:.2f} s/{unit}" if seconds_per_step < 100 else f"{seconds_per_step:.0f} s/{unit}"


class _Rate:
    """Seconds per step, smoothed exponentially over steps (so one slow step, a validation,
    moves it a little), and the time left at that rate."""

    def __init__(self, done: int = 0):
        self.time, self.done, self.per_step = time.monotonic(), done, None

    def add(self, done: int, seconds: float | None = None) -> None:
        """``done`` steps completed; ``seconds`` the last step's own time, else wall time since the last call."""
        now = time.monotonic()
        steps = done - self.done
        if steps <= 0:
            return
        per = seconds if seconds is not None else (now - self.time) / steps
        weight = 1 - (1 - RATE_SMOOTHING) ** steps
        self.per_step = per if self.per_step is None else self.per_step + weight * (per - self.per_step)
        self.time, self.done = now, done

    def left(self, total: int | None) -> str:
        if total is None or self.per_step is None:
            return "-"
        return _duration(max(0, total - self.done) * self.per_step)


@dataclass
class _LineTask:
    """What rich's TextColumn templates read of a task."""

    description: str
    total: float | None
    completed: float
    visible: bool
    fields: dict[str, Any]
    start: float = dataclass_field(default_factory=time.monotonic)
    reported: bool = False  # its end was printed

    @property
    def percentage(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 0.0


class _Lines:
    """The part of rich's Progress that nfit uses, as plain lines at most every PLAIN_INTERVAL
    seconds (and at each task's end): what a log file or nohup.out gets instead of a bar."""

    def __init__(self, *columns, console: Console):
        self.columns, self.console = columns, console
        self.tasks: dict[int, Any] = {}
        self.last = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # a heartbeat: a step (or a validation) may take longer than the interval
        self.beat = threading.Thread(target=self._heartbeat, daemon=True)

    def __enter__(self):
        self.beat.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.beat.join()
        return False

    def _heartbeat(self) -> None:
        while not self.stop.wait(min(1.0, max(0.1, PLAIN_INTERVAL))):
            with self.lock:
                if time.monotonic() - self.last < PLAIN_INTERVAL:
                    continue
                self.last = time.monotonic()
                for t in list(self.tasks.values()):
                    if t.visible and not t.reported:
                        self._print(t)

    def _print(self, t) -> None:
        self.console.print(self._line(t), markup=False, highlight=False, soft_wrap=True)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, visible: bool = True,
                 **fields) -> int:
        task = len(self.tasks)
        self.tasks[task] = _LineTask(description, total, completed, visible, fields)
        return task

    def update(self, task: int, *, completed: float | None = None, advance: float | None = None,
               description: str | None = None, visible: bool | None = None, **fields) -> None:
        t = self.tasks[task]
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        if description is not None:
            t.description = description
        if visible is not None:
            t.visible = visible
        t.fields.update(fields)
        with self.lock:
            now = time.monotonic()
            finished = t.total is not None and t.completed >= t.total
            if t.visible and (now - self.last >= PLAIN_INTERVAL or finished and not t.reported):
                self.last = now
                t.reported = finished
                self._print(t)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _line(self, t) -> str:
        parts = []
        for column in self.columns:
            if isinstance(column, TextColumn):
                text = Text.from_markup(column.text_format.format(task=t)).plain.strip()
                parts.append(text)
            elif isinstance(column, MofNCompleteColumn):
                parts.append(f"{t.completed:g}/{t.total:g}" if t.total is not None else f"{t.completed:g}")
        parts.append(f"elapsed {_duration(time.monotonic() - t.start)}")
        return "  ".join(p for p in parts if p)


def _progress(*columns, enabled: bool = True):
    """A rich Progress on a terminal, plain periodic lines elsewhere (or nothing when disabled)."""
    if enabled and not err.is_terminal:
        return _Lines(*columns, console=err)
    return Progress(*columns, TimeElapsedColumn(), console=err, disable=not enabled)


class _FitProgress:
    """A bar per batch (step, loss, PSNR, speed, time left), and one over the files when many."""

    def __init__(self, enabled: bool, files: int = 0):
        self.last = None
        self.progress = _progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("left {task.fields[left]}"),
            enabled=enabled,
        )
        self.files = self.progress.add_task("files", total=files, stats="", rate="", left="-", visible=files > 0)
        self.file_rate = _Rate()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def file_done(self, outcome) -> None:
        done = self.progress.tasks[self.files].completed + 1
        self.file_rate.add(done)
        self.progress.update(self.files, completed=done, rate=_rate_text(self.file_rate.per_step, "file"),
                             left=self.file_rate.left(self.progress.tasks[self.files].total))

    def __call__(self, label: str, steps: int):
        if self.last is not None:  # a folder of thousands: show the batch at work, not every batch so far
            self.progress.update(self.last, visible=False)
        task = self.last = self.progress.add_task(label, total=steps, stats="", rate="", left="-")
        rate = _Rate()

        def on_step(info) -> None:
            rate.add(info.step)
            self.progress.update(task, completed=info.step, stats=f"loss {info.loss:.2e}  PSNR {info.psnr:6.2f} dB",
                                 rate=_rate_text(rate.per_step), left=rate.left(steps))

        return on_step


def _adapt_config(test: dict, steps, lr, gamma, no_rescale: bool, optimizer: str, batch_size: int, device: str):
    """Test-time settings: the command line's, else the init file's own (``test``), else the defaults."""
    kwargs: dict[str, Any] = {"optimizer": optimizer, "rescale": not no_rescale, "batch_size": batch_size, "device": device}
    if optimizer == "adam":
        kwargs.update(adam_steps=steps if steps is not None else AdaptConfig.adam_steps,
                      adam_lr=lr if lr is not None else AdaptConfig.adam_lr)
    else:
        kwargs.update(steps=steps if steps is not None else int(test.get("steps", AdaptConfig.steps)),
                      lr=lr if lr is not None else float(test.get("lr", AdaptConfig.lr)))
    kwargs["gamma"] = gamma if gamma is not None else float(test.get("gamma", AdaptConfig.gamma))
    return AdaptConfig(**kwargs)


def _fit_plan(given: list[Path], output: Optional[Path], out_dir: Optional[Path],
              modality: Optional[str] = None) -> tuple[list[Path], list[Path]]:
    """Inputs (folders expanded, recursively: their media files, or those of ``modality``) and
    their outputs: ``-o``, ``-O DIR`` (a folder's subfolders mirrored inside DIR) or beside each input."""
    from nfit.atomic import make_dirs
    from nfit.data import scan_folder
    from nfit.signals import EXTENSIONS, MODALITIES

    extensions = MODALITIES[modality].extensions if modality in MODALITIES else EXTENSIONS

    if output is not None and out_dir is not None:
        raise ConfigError(None, "give either -o/--output or -O/--out-dir, not both")
    pairs: list[tuple[Path, Path]] = []
    for item in given:
        if item.is_dir():
            pairs += [(f, f.relative_to(item).with_suffix(".nf")) for f in scan_folder(item, extensions)]
        else:
            pairs.append((item, Path(item.stem + ".nf")))
    inputs = [src for src, _ in pairs]
    if output is not None:
        if len(inputs) > 1:
            raise ConfigError("-o", "one output file for several inputs: use -O DIR instead")
        return inputs, [output]
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(out_dir, "is not a directory")
        outputs = [out_dir / rel for _, rel in pairs]
        for parent in sorted({o.parent for o in outputs}):
            make_dirs(parent)
        return inputs, outputs
    return inputs, [src.with_suffix(".nf") for src in inputs]


@app.command()
def fit(
    inputs: list[Path] = typer.Argument(..., help="Media files, or folders of them (searched recursively).",
                                        show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Output .nf (one input)."),
    out_dir: Optional[Path] = typer.Option(None, "-O", "--out-dir", help="Directory for one .nf per input."),
    steps: Optional[int] = typer.Option(
        None, help=f"Steps [default: {FitConfig.steps} Adam steps; from --init: {AdaptConfig.steps} SGD steps, "
        f"or {AdaptConfig.adam_steps} with --optimizer adam]."),
    lr: Optional[float] = typer.Option(
        None, help=f"Learning rate [default: Adam {FitConfig.lr:g}; from --init: SGD {AdaptConfig.lr:g}, Adam {AdaptConfig.adam_lr:g}]."),
    init: Optional[str] = typer.Option(
        None, help="A learned initialisation (init file or run directory), or 'default' for the one nfit ships "
        "[default: random, Adam]."),
    density: Optional[float] = typer.Option(
        None, help="From a sparse run (--init RUN): fit at the level whose density is nearest this, e.g. 0.1."),
    standalone: bool = typer.Option(
        False, "--standalone", help="Sparse fields: embed the packed mask, so rendering needs no --init."),
    dtype: str = typer.Option(StoreConfig.dtype, help="Stored values: float32, or float16 (half the bytes)."),
    optimizer: str = typer.Option(AdaptConfig.optimizer, help="From --init: sgd (GradNCP's Algorithm 2) or adam."),
    no_rescale: bool = typer.Option(False, "--no-rescale", help="From --init: plain full-context SGD, no gradient re-scaling."),
    gamma: Optional[float] = typer.Option(None, help="From --init: fraction of points that sets the step size [default: the init's]."),
    field: str = typer.Option(FieldOptions.name, help=FIELD_HELP),
    width: Optional[int] = typer.Option(None, help=f"Hidden width [default: {SirenConfig.width}]."),
    depth: Optional[int] = typer.Option(None, help=f"Linear layers [default: {SirenConfig.depth}]."),
    w0: Optional[float] = typer.Option(None, help=f"SIREN frequency w0 [default: {SirenConfig.w0:g}]."),
    field_config: Optional[str] = typer.Option(None, help=FIELD_CONFIG_HELP),
    modality: Optional[str] = typer.Option(None, help=_MODALITY_HELP),
    sample_rate: Optional[int] = typer.Option(
        None, help="Audio: resample to this many Hz [default: the file's; from --init: the init's]."),
    duration: Optional[float] = typer.Option(None, help="Audio: crop or pad to this many seconds [default: whole file]."),
    frames: Optional[int] = typer.Option(None, help="Video: keep this many frames [default: all]."),
    stride: int = typer.Option(SignalOptions.stride, help="Video: keep every N-th frame."),
    res: Optional[int] = typer.Option(
        None, help="Images: resized to longest side RES (aspect kept); video: centre square crop resized to RES x RES "
        "[default: native; NeRV init: its size]."),
    seed: int = typer.Option(FitConfig.seed, help="Seed of the random initialisation."),
    target_psnr: Optional[float] = typer.Option(None, help="Stop a file once its PSNR (dB) reaches this."),
    batch_size: int = typer.Option(FitConfig.batch_size, help="Files of equal shape fitted together."),
    device: str = typer.Option(FitConfig.device, help="auto, cpu or cuda."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave inputs whose output exists alone."),
    force: bool = typer.Option(False, "--force", help="Replace existing outputs that nfit did not write."),
    save_context_maps: Optional[Path] = typer.Option(
        None, help="From an initialisation: draw GradNCP's selected context at each step into this folder (PNG, GIF)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Fit neural fields to media files: `nfit fit photo.png -o photo.nf`, or many with -O DIR.

    Images, audio (WAV, FLAC, OGG, MP3) and video (MP4, WebM, AVI, MOV) alike.

    With `--init RUN/init.safetensors` the fit starts from a learned initialisation and
    takes a few re-scaled SGD steps (GradNCP's Algorithm 2). From a sparse run
    (`--init RUN --density 0.1`) the file stores only the surviving weights.

    Many files (or a folder) are streamed: each output is written as soon as it is
    fitted, a file that fails is listed at the end while the others go on (exit code 3),
    and --skip-existing finishes an interrupted run.
    """
    from nfit.api import fit_files
    from nfit.api import save_context_maps as save_maps
    from nfit.runs import load_init
    from nfit.inits import DEFAULT

    many = len(inputs) > 1 or any(p.is_dir() for p in inputs)

    def job():
        files, outputs = _fit_plan(inputs, output, out_dir, modality)
        options = SignalOptions(modality, sample_rate, duration, frames, stride, res)
        custom_field = field != FieldOptions.name or width or depth or w0 or field_config
        learned = init not in (None, "random")
        config = FitConfig(steps=FitConfig.steps if steps is None or learned else steps,
                           lr=FitConfig.lr if lr is None or learned else lr,
                           seed=seed, target_psnr=target_psnr, batch_size=batch_size, device=device)
        adapt = meta = None
        if init == DEFAULT:
            if custom_field:
                raise ConfigError("--init", "the initialisation decides the field: drop --field/--width/--depth/--w0")
            if not _ships_init(files):
                raise ConfigError("--init", "nfit ships no initialisation for these files")
            meta = DEFAULT  # the shipped initialisation: test-time settings from nfit's defaults
            adapt = _adapt_config({}, steps, lr, gamma, no_rescale, optimizer, batch_size, device)
        elif init is not None and init != "random":
            if custom_field:
                raise ConfigError("--init", "the initialisation decides the field: drop --field/--width/--depth/--w0")
            meta = load_init(init, density)
            adapt = _adapt_config(meta.test, steps, lr, gamma, no_rescale, optimizer, batch_size, device)
        elif no_rescale or gamma is not None or optimizer != AdaptConfig.optimizer or density is not None:
            raise ConfigError(None, "--optimizer, --no-rescale, --gamma and --density apply to fitting from --init")
        store = StoreConfig(dtype, standalone)
        if save_context_maps is not None:
            if meta is None or adapt.optimizer != "sgd" or not adapt.rescale:
                raise ConfigError("--save-context-maps", "draws the context of re-scaled SGD from an initialisation")
            save_maps(files, save_context_maps, meta, adapt)
        with _FitProgress(enabled=not as_json, files=len(files) if many else 0) as progress:
            return fit_files(files, outputs, config, _field_options(field, width, depth, w0, field_config), progress, init=meta,
                             adapt=adapt, store=store, keep_going=many, skip_existing=skip_existing,
                             on_outcome=progress.file_done, options=options, force=force)

    rows = [_fit_row(o) for o in _run(job)]
    failures = [r for r in rows if r["status"] == "failed"]
    if as_json:
        print(json.dumps(rows if many else rows[0], indent=2))
    else:
        table = Table(title="nfit fit", title_justify="left", caption_justify="left",
                      caption="PSNR, SSIM and steps are of what is stored: each file's best iterate (Adam), which the "
                              "bar's last PSNR, of the latest iterate, may differ from.")
        for col in ("output", "PSNR dB", "SSIM", "steps", "seconds", "bytes", "bits/sample"):
            table.add_column(col, justify="left" if col == "output" else "right")
        for r in rows:
            if r["status"] != "fitted":
                table.add_row(r["output"], r["status"], *[""] * 5)
                continue
            ssim = "-" if r["ssim"] is None else f"{r['ssim']:.4f}"
            table.add_row(r["output"], f"{r['psnr']:.2f}", ssim, str(r["steps"]), f"{r['seconds']:.1f}",
                          f"{r['bytes']:,}", f"{r['bits_per_pixel']:.2f}")
        out.print(table)
    if many:
        counts = {k: sum(r["status"] == k for r in rows) for k in ("fitted", "skipped", "failed")}
        err.print(f"nfit: {len(rows)} file(s): " + ", ".join(f"{v} {k}" for k, v in counts.items()), highlight=False)
        for r in failures:
            err.print(f"nfit: failed: {r['error']}", markup=False, highlight=False, soft_wrap=True)
        if failures:
            raise typer.Exit(EXIT_SOME_FAILED)


def _ships_init(files: list[Path]) -> bool:
    """Whether nfit ships an initialisation for the modality of these files."""
    from nfit.inits import default_init_path
    from nfit.signals import modality_for

    try:
        return bool(files) and default_init_path(modality_for(files[0]).name) is not None
    except NfitError:
        return False  # an unreadable name: the fit itself reports it


def _fit_row(o) -> dict[str, Any]:
    """One input's line of the summary (a FileOutcome as plain data)."""
    row: dict[str, Any] = {"input": str(o.input), "output": str(o.output), "status": o.status}
    if o.status == "fitted":
        row.update({k: o.summary[k] for k in ("psnr", "ssim", "steps", "seconds")})
        row.update(bytes=o.bytes, bits_per_pixel=round(o.bytes * 8 / math.prod(o.shape), 4))
    if o.error is not None:
        row["error"] = str(o.error)
    return row


class _RenderProgress:
    """A bar over the grid samples, shown only once a render has run RENDER_BAR_AFTER seconds."""

    def __init__(self):
        self.start, self.progress, self.task = time.monotonic(), None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.progress is not None else False

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            if time.monotonic() - self.start < RENDER_BAR_AFTER:
                return
            self.progress = _progress(TextColumn("[bold]render"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                      TextColumn("left {task.fields[left]}"))
            self.progress.__enter__()
            self.task = self.progress.add_task("render", total=total, left="-")
            self.rate = _Rate()
        self.rate.add(done)
        self.progress.update(self.task, completed=done, left=self.rate.left(total))


@app.command()
def render(
    file: Path = typer.Argument(..., help="A .nf file.", show_default=False),
    output: Optional[Path] = typer.Option(
        None, "-o", "--output", help="Output: image .png/.jpg, audio .wav/.flac, video .mp4/.webm or a folder "
        "for PNG frames [default: beside FILE, as FILE_render.png/.wav/.mp4]."),
    res: Optional[int] = typer.Option(RenderConfig.res, help="Images, video: longest side in pixels; aspect ratio kept."),
    width: Optional[int] = typer.Option(RenderConfig.width, help="Output width (with --height, or alone)."),
    height: Optional[int] = typer.Option(RenderConfig.height, help="Output height (with --width, or alone)."),
    sample_rate: Optional[int] = typer.Option(RenderConfig.sample_rate, help="Audio: samples per second [default: the source's]."),
    fps: Optional[float] = typer.Option(RenderConfig.fps, help="Video: frames per second [default: the source's]."),
    bit_depth: Optional[int] = typer.Option(RenderConfig.bit_depth, help="8 or 16 (PNG, WAV, FLAC) [default: the source's]."),
    quality: int = typer.Option(RenderConfig.quality, help="JPEG, MP4, WebM quality (1-100)."),
    init: Optional[Path] = typer.Option(
        None, help="Sparse fields: the initialisation holding the mask (file, or run directory searched by hash)."),
    device: str = typer.Option(RenderConfig.device, help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output that nfit did not render."),
) -> None:
    """Decode a .nf file at its native size or any other: `nfit render photo.nf --res 1024 -o big.png`.

    Fields are continuous: audio renders at any --sample-rate, video at any --fps and size.
    """
    from nfit.api import load
    from nfit.render import default_output, render_to_file

    def job():
        if res is not None and (width is not None or height is not None):
            raise ConfigError(None, "give --res or --width/--height, not both")
        nf = load(file, init)
        target = output if output is not None else default_output(file, nf.modality)
        config = RenderConfig(res=res, width=width, height=height, sample_rate=sample_rate, fps=fps,
                              bit_depth=bit_depth, quality=quality, device=device)
        protect = [file] + ([init] if init is not None and init.is_file() else [])
        with _RenderProgress() as progress:
            return render_to_file(nf, target, config, protect=protect, force=force, on_progress=progress), nf.modality

    (path, shape), modality = _run(job)
    size = f"{shape[0]:,} samples" if modality == "audio" else " x ".join(map(str, reversed(shape[-2:])))
    if modality == "video":
        size += f", {shape[0]} frames"
    err.print(f"wrote {path} ({size})", highlight=False, soft_wrap=True)


@app.command()
def info(
    file: Path = typer.Argument(..., help="A .nf file, an init file or a run directory.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Describe a .nf file (modality, shape, field, parameters, bytes, how it was fitted) or an init file."""
    from nfit.api import info as info_

    data = _run(lambda: info_(file))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if data["kind"] == "init":
        sig = data["signal"]
        rows = [
            ("file", data["file"]),
            ("kind", f"initialisation ({data['format']} v{data['format_version']}), sha256 {data['sha256'][:16]}..."),
            ("modality", data["modality"]),
            ("trained on", " x ".join(map(str, sig["shape"])) + f", {sig['channels']} channel(s)"
             + (f", {sig['rate']:g} Hz" if sig.get("rate") and data["modality"] == "audio" else "")),
            ("field", f"{data['field']['name']} " + json.dumps(data["field"]["config"])),
            ("parameters", f"{data['parameters']:,}"),
            ("algorithm", f"{data['algo']['name']} " + json.dumps(data["algo"]["config"])),
            ("test-time", json.dumps(data["test"])),
            ("data", json.dumps(data["data"])),
            ("training", ", ".join(f"{k}={v}" for k, v in data["train"].items())),
        ]
        sp = data.get("sparsity")
        if sp:
            rows.insert(6, ("sparsity", f"level {sp['level']} of {sp['rounds']} ({sp['prune']} pruning): density "
                            f"{sp['density']:.4f}, {sp['alive']:,} of {sp['weights']:,} weights, {sp['values']:,} values "
                            f"with biases" + (f"; dense-narrow equivalent: width {sp['dense_narrow_width']}"
                                              if sp["dense_narrow_width"] else "")))
        for k, v in rows:
            table.add_row(k, _plain(str(v)))
        out.print(table)
        return
    fit_ = data["fit"]
    rows = [
        ("file", data["file"]),
        ("format version", f"{data['format_version']}, written by nfit {data['nfit_version'] or '(unknown)'}"),
        ("modality", data["modality"]),
        ("shape", " x ".join(map(str, data["shape"])) + f", {data['channels']} channel(s), {data['bit_depth']}-bit source"
         + ("" if data["rate"] is None else f", {data['rate']:g} {'Hz' if data['modality'] == 'audio' else 'fps'}, "
            f"{data['duration']:g} s")),
        ("source", str(data["source"])),
        ("field", f"{data['field']['name']} " + json.dumps(data["field"]["config"])),
        ("parameters", f"{data['parameters']:,}"),
        ("stored values", f"{data['values']:,} {data['dtype']} (density {data['density']:.4f}"
         + (f", mask {'embedded' if data['mask'] == 'embedded' else 'in the initialisation'})" if data["mask"] else ")")),
        ("bytes", _size_row(data)),
        ("init", json.dumps(data["init"])),
        ("fit", ", ".join(f"{k}={v}" for k, v in fit_.items())),
    ]
    for k, v in rows:
        table.add_row(k, _plain(v))
    out.print(table)


def _size_row(data: dict[str, Any]) -> str:
    """Bytes, bits per sample, and against what the source takes: raw, and as its file was."""
    unit = "pixel" if data["modality"] == "image" else "sample"
    text = f"{data['bytes']:,} ({data['bits_per_sample']:.2f} bits per {unit}; {data['bytes'] / data['raw_bytes']:.2f}x the raw " \
        f"{data['bit_depth']}-bit samples"
    if data.get("source_bytes"):
        text += f", {data['bytes'] / data['source_bytes']:.2f}x the source file's {data['source_bytes']:,} bytes"
    return text + ")"


def _plain(text: str) -> Text:
    """A metadata string as inert text: no rich markup, and control characters (terminal
    escape sequences a crafted file could carry) shown escaped."""
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in text))


def _gb(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class _TrainProgress:
    """One bar over outer steps (updated every step): loss, train PSNR, speed, time left, peak
    memory, last validation PSNR; one line each for the memory plan and the time estimate."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = _progress(
            TextColumn("[bold]meta-train"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  train {task.fields[psnr]} dB  val {task.fields[val]} dB"),
            TextColumn("{task.fields[rate]}  left {task.fields[left]}  mem {task.fields[mem]}"),
            enabled=enabled,
        )
        self.task = None
        self.rate = _Rate()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def __call__(self, event) -> None:
        v = event.values
        if event.kind == "start":
            d = v["data"]
            grid = "x".join(map(str, d["shape"])) + (f" at {d['rate']:g} Hz" if d.get("rate") else "")
            self._say(
                f"{d['root']}: {d['train']} training and {d['val']} validation {d['modality']} files on a {grid} grid, "
                f"{d['channels']} channel(s); {v['params']:,} parameters on {v['device']}"
                + (f", {v['processes']} processes" if v["processes"] > 1 else ""))
            self.rate = _Rate(event.step)
            self.task = self.progress.add_task("", total=event.steps, completed=event.step, loss="-", psnr="-",
                                               val="-", rate="", left="-", mem="-")
        elif event.kind == "memory":
            m, b = v["micro_batch"], v["batch"]
            how = ("the whole batch at once" if m >= b else f"micro-batch {m} (the same step, {m} of {b} signals at a time)")
            why = "chosen to fit" if v["chosen"] else "as given"
            self._say(f"memory: one outer step needs about {_gb(v['fixed'])} + {_gb(v['per_signal'])} per signal; "
                      f"{_gb(v['available'])} may be used: {how}, {why}")
            if not v["chosen"] and v["need"] > v["available"]:
                self._say(f"nfit: warning: --micro-batch {m} needs about {_gb(v['need'])}, more than the "
                          f"{_gb(v['available'])} that may be used; at most {v['fits']} fit")
        elif event.kind == "tick":
            self.rate.add(event.step, v["seconds"])
            self.progress.update(self.task, completed=event.step, loss=f"{v['loss']:.3e}", psnr=f"{v['train_psnr']:.2f}",
                                 mem=_gb(v["peak_memory"]), rate=_rate_text(self.rate.per_step),
                                 left=self.rate.left(event.steps))
        elif event.kind == "estimate":
            self._say(f"about {_rate_text(v['seconds_per_step'])}: {_duration(v['remaining_s'])} for the "
                      f"{event.steps - event.step:,} steps left (measured over {v['measured_steps']} step(s))")
        elif event.kind == "validating":
            self.progress.update(self.task, description="validating")
        elif event.kind == "val":
            self.progress.update(self.task, val=f"{v['val_psnr']:.2f}", description="")
        elif event.kind == "round":
            self.progress.update(self.task, description=f"round {v['level']}/{v['rounds']} density {v['density']:.3f}")
            self._say(f"round {v['level']}/{v['rounds']}: pruned to density {v['density']:.4f} ({v['alive']:,} weights)")
        elif event.kind == "warning":
            self._say(f"nfit: warning: {v['message']}")


@app.command("meta-train")
def meta_train(
    data: Optional[Path] = typer.Argument(None, help="Folder of training files (searched recursively).", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Run directory to create."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its checkpoint."),
    algo: str = typer.Option(TrainConfig.algo, help="gradncp, maml, or sparse (Meta-SparseINR, with --from)."),
    init_from: Optional[Path] = typer.Option(
        None, "--from", help="sparse: the dense run (or init file) to prune; its field, grid and channels are kept."),
    rounds: Optional[int] = typer.Option(None, help=f"sparse: pruning rounds [default: {SparseConfig.rounds}]."),
    prune_fraction: Optional[float] = typer.Option(
        None, help=f"sparse: share of the remaining weights removed per round [default: {SparseConfig.prune_fraction}]."),
    steps_per_round: Optional[int] = typer.Option(
        None, help=f"sparse: outer steps after each pruning [default: {SparseConfig.steps_per_round}]."),
    prune: Optional[str] = typer.Option(
        None, help=f"sparse: magnitude, or random (the baseline) [default: {SparseConfig.prune}]."),
    inner: Optional[str] = typer.Option(None, help="sparse: maml or gradncp inside each round [default: the dense run's]."),
    modality: Optional[str] = typer.Option(None, help=_MODALITY_HELP),
    res: Optional[int] = typer.Option(
        None, help="Images, video: shorter side resized, centre-cropped square "
        f"[default: {', '.join(f'{k} {v}' for k, v in DEFAULT_RES.items())}]."),
    sample_rate: int = typer.Option(DataConfig.sample_rate, help="Audio: clips resampled to this many Hz."),
    duration: float = typer.Option(DataConfig.duration, help="Audio: clips cropped or padded to this many seconds."),
    frames: int = typer.Option(DataConfig.frames, help="Video: frames per clip."),
    stride: int = typer.Option(DataConfig.stride, help="Video: keep every N-th frame."),
    steps: Optional[int] = typer.Option(None, help=f"Outer steps [default: {TrainConfig.steps}]."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Signals per outer step (over all processes)."),
    micro_batch: Optional[int] = typer.Option(
        TrainConfig.micro_batch, help="Signals per forward/backward: same step, less memory [default: the whole batch]."),
    lr: float = typer.Option(TrainConfig.lr, help="Outer Adam learning rate."),
    clip: float = typer.Option(TrainConfig.clip, help="Outer gradient-norm clipping."),
    seed: int = typer.Option(TrainConfig.seed, help="Seed of the initialisation, the split and the batch order."),
    inner_steps: Optional[int] = typer.Option(None, help="K inner steps [default: gradncp 16, maml 4]."),
    inner_lr: Optional[float] = typer.Option(None, help="Inner SGD step size alpha [default: 1e-2]."),
    first_order: bool = typer.Option(False, "--first-order", help="First-order inner loop (no second derivatives)."),
    gamma: Optional[float] = typer.Option(None, help="gradncp: fraction of points kept per inner step [default: 0.25]."),
    boot_steps: Optional[int] = typer.Option(None, help="gradncp: bootstrap steps L [default: 5]."),
    boot_lr: Optional[float] = typer.Option(None, help="gradncp: bootstrap step size [default: 5e-2]."),
    lam: Optional[float] = typer.Option(None, help="gradncp: weight of the bootstrap distance [default: 100]."),
    field: str = typer.Option(FieldOptions.name, help=FIELD_HELP),
    width: Optional[int] = typer.Option(None, help=f"Hidden width [default: {SirenConfig.width}]."),
    depth: Optional[int] = typer.Option(None, help=f"Linear layers [default: {SirenConfig.depth}]."),
    w0: Optional[float] = typer.Option(None, help=f"SIREN frequency w0 [default: {SirenConfig.w0:g}]."),
    field_config: Optional[str] = typer.Option(None, help=FIELD_CONFIG_HELP),
    channels: Optional[int] = typer.Option(
        None, help="Channels [default: images 1 if the first file is grey, else 3; audio the first file's; video 3]."),
    val: Optional[Path] = typer.Option(None, help="Validation folder [default: a split of DATA]."),
    val_fraction: float = typer.Option(DataConfig.val_fraction, help="Share of DATA held out for validation."),
    val_limit: int = typer.Option(DataConfig.val_limit, help="Validation signals evaluated each time."),
    val_every: int = typer.Option(TrainConfig.val_every, help="Validate every N outer steps."),
    test_steps: int = typer.Option(TrainConfig.test_steps, help="K_test: test-time steps of validation."),
    ckpt_every: int = typer.Option(TrainConfig.ckpt_every, help="Checkpoint every N outer steps."),
    log_every: int = typer.Option(TrainConfig.log_every, help="Log every N outer steps."),
    workers: Optional[int] = typer.Option(DataConfig.workers, help="Decoding processes [default: min(4, CPU cores)]."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file instead of skipping it."),
    nan_policy: Optional[str] = typer.Option(
        None, help=f"A non-finite loss: stop (keep the last checkpoint) or skip the update and count it "
        f"[default: {TrainConfig.nan_policy}; with --resume: the run's]."),
    device: str = typer.Option(TrainConfig.device, help="auto, cpu or cuda."),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the whole outer step (maml, gradncp; one process); on CUDA also TF32 matmuls."),
    force: bool = typer.Option(
        False, "--force", help="Write into a folder that holds files of a run's names but no run (they are replaced)."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Keep no activations of the inner steps and outer loss; recompute "
        "them in the backward pass: the same steps in a fraction of the memory, about a third more time."),
) -> None:
    """Learn an initialisation over a folder: `nfit meta-train ./faces -o runs/faces`.

    Folders of images, audio clips or videos: every signal is conformed to one grid
    (--res; --sample-rate and --duration; --frames, --stride and --res).

    The result is RUN/init.safetensors, for `nfit fit --init`. Ctrl-C saves a checkpoint;
    `nfit meta-train --resume RUN` continues it exactly (with the run's own settings;
    --steps may extend it). Multi-GPU: `torchrun --nproc-per-node N -m nfit meta-train ...`.

    Meta-SparseINR: `nfit meta-train DATA -o SPARSE --algo sparse --from DENSE_RUN --rounds 20`
    keeps every level in SPARSE/levels/; fit one with `nfit fit IMG --init SPARSE --density 0.1`.
    """
    import os

    from nfit.train import meta_train as train_

    main_rank = os.environ.get("RANK", "0") == "0"

    def job():
        if resume is not None:
            if output is not None and output != resume:
                raise ConfigError(None, "--resume RUN continues RUN: drop -o")
            train = None if steps is None else TrainConfig(steps=steps)
            with _TrainProgress(enabled=main_rank) as progress:
                return train_(data, resume, train, resume=True, nan_policy=nan_policy, on_event=progress)
        if output is None:
            raise ConfigError(None, "give the run directory with -o RUN")
        if algo == "sparse":
            given = [n for n, v in (("--steps", steps), ("--res", res), ("--channels", channels), ("--width", width),
                                    ("--depth", depth), ("--w0", w0), ("--field-config", field_config)) if v is not None]
            if given or field != FieldOptions.name:
                raise ConfigError(given[0] if given else "--field", "--algo sparse takes this from the dense run "
                                  "(--from); the length is --rounds x --steps-per-round")
        train = TrainConfig(algo=algo, steps=TrainConfig.steps if steps is None else steps, batch_size=batch_size,
                            micro_batch=micro_batch, lr=lr, clip=clip, seed=seed, log_every=log_every, val_every=val_every,
                            ckpt_every=ckpt_every, test_steps=test_steps, device=device, compile=compile_,
                            nan_policy=TrainConfig.nan_policy if nan_policy is None else nan_policy)
        data_config = DataConfig(modality=modality, res=res, sample_rate=sample_rate, duration=duration, frames=frames,
                                 stride=stride, channels=channels, val_fraction=val_fraction, val_limit=val_limit,
                                 workers=workers, strict=strict)
        options = {"inner_steps": inner_steps, "inner_lr": inner_lr, "first_order": True if first_order else None,
                   "gradient_checkpointing": True if gradient_checkpointing else None,
                   "gamma": gamma, "boot_steps": boot_steps, "boot_lr": boot_lr, "lam": lam, "rounds": rounds,
                   "prune_fraction": prune_fraction, "steps_per_round": steps_per_round, "prune": prune, "inner": inner}
        with _TrainProgress(enabled=main_rank) as progress:
            return train_(data, output, train, data_config, _field_options(field, width, depth, w0, field_config), options,
                          val_dir=val, init_from=init_from, on_event=progress, force=force)

    result = _run(job)
    if not main_rank:
        return
    if result.interrupted:
        err.print(f"nfit: interrupted at step {result.step}; checkpoint saved. Continue with: nfit meta-train --resume {result.run}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    val_ = "-" if result.val_psnr is None else f"{result.val_psnr:.2f} dB"
    bad = f", {result.bad_files} unreadable file(s) skipped" if result.bad_files else ""
    bad += f", {result.skipped_steps} non-finite step(s) skipped" if result.skipped_steps else ""
    err.print(f"wrote {result.init} (step {result.step}, validation PSNR {val_}{bad})", highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    inits: list[str] = typer.Argument(
        ..., help="Init files or run directories, or 'random' for the baseline; several are compared.", show_default=False),
    data: Path = typer.Argument(..., help="Folder of signals to fit.", show_default=False),
    optimizer: str = typer.Option(AdaptConfig.optimizer, help="sgd (re-scaled and plain) or adam (Meta-SparseINR's protocol)."),
    steps: Optional[int] = typer.Option(
        None, help=f"Test-time steps K [default: SGD {AdaptConfig.steps}, Adam {AdaptConfig.adam_steps}]."),
    lr: Optional[float] = typer.Option(None, help=f"Step size [default: SGD {AdaptConfig.lr:g}, Adam {AdaptConfig.adam_lr:g}]."),
    gamma: float = typer.Option(AdaptConfig.gamma, help="Fraction of points that sets the re-scaled step."),
    density: Optional[float] = typer.Option(None, help="Sparse runs: evaluate the level nearest this density."),
    batch_size: int = typer.Option(AdaptConfig.batch_size, help="Signals fitted together."),
    modality: Optional[str] = typer.Option(None, help="Random baseline: " + _MODALITY_HELP),
    res: Optional[int] = typer.Option(None, help="Random baseline: image or video frame side [default: as meta-train]."),
    sample_rate: int = typer.Option(DataConfig.sample_rate, help="Random baseline: audio sample rate."),
    duration: float = typer.Option(DataConfig.duration, help="Random baseline: audio seconds."),
    frames: int = typer.Option(DataConfig.frames, help="Random baseline: video frames."),
    field: str = typer.Option(FieldOptions.name, help="Random baseline: " + FIELD_HELP),
    width: Optional[int] = typer.Option(None, help="Random baseline: hidden width."),
    depth: Optional[int] = typer.Option(None, help="Random baseline: linear layers."),
    w0: Optional[float] = typer.Option(None, help="Random baseline: SIREN w0."),
    field_config: Optional[str] = typer.Option(None, help="Random baseline: " + FIELD_CONFIG_HELP),
    seed: int = typer.Option(0, help="Random baseline: seed."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N files."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable file."),
    device: str = typer.Option(AdaptConfig.device, help="auto, cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the report(s) as JSON on stdout."),
) -> None:
    """PSNR and SSIM after each of K steps from an initialisation, over a folder: `nfit eval RUN ./test`.

    Several initialisations are compared on the same files, e.g. Meta-SparseINR against its
    baselines: `nfit eval SPARSE RANDOM_PRUNED NARROW random ./test --optimizer adam --density 0.1`.
    """
    from nfit.api import evaluate

    def job():
        if all(i != "random" for i in inits) and (width or depth or w0 or field_config or field != FieldOptions.name):
            raise ConfigError(None, "--field/--width/--depth/--w0 apply to the random baseline only")
        data_config = DataConfig(modality=modality, res=res, sample_rate=sample_rate, duration=duration, frames=frames)
        config = _adapt_config({}, steps, lr, gamma, False, optimizer, batch_size, device)
        warn = lambda m: err.print(f"nfit: warning: {m}", markup=False, highlight=False)  # noqa: E731
        reports = []
        with _progress(TextColumn("[bold]eval {task.description}"), BarColumn(), MofNCompleteColumn(),
                       enabled=not as_json) as bar:
            for init in inits:
                task = bar.add_task(init, total=None)
                reports.append(evaluate(
                    init, data, config=config, data_config=data_config, field_options=_field_options(field, width, depth, w0, field_config),
                    seed=seed,
                    limit=limit, strict=strict, warn=warn, on_batch=lambda n, task=task: bar.advance(task, n),
                    density=density if _is_sparse_run(init) else None))
        return reports

    reports = _run(job)
    if as_json:
        data_ = [r.to_json() for r in reports]
        print(json.dumps(data_[0] if len(data_) == 1 else data_, indent=2))
        return
    for report in reports:
        _print_eval(report)
    if len(reports) > 1:
        _print_comparison(reports)
    if reports[0].bad_files:
        err.print(f"{reports[0].bad_files} unreadable file(s) skipped", highlight=False)


def _is_sparse_run(init: str) -> bool:
    """--density applies to the sparse runs among the compared initialisations, not to dense baselines."""
    from nfit.runs import level_files

    return init != "random" and Path(init).is_dir() and bool(level_files(Path(init)))


def _print_eval(report) -> None:
    shape = "x".join(map(str, report.shape))
    table = Table(title=f"nfit eval {report.init}: {report.signals} signals at {shape}", title_justify="left")
    table.add_column("step", justify="right")
    for name in report.results:
        table.add_column(f"PSNR {name}", justify="right")
        table.add_column(f"SSIM {name}", justify="right")
    for k in range(report.steps + 1):
        row = [str(k)]
        for res_ in report.results.values():
            row.append(f"{res_['psnr_mean'][k]:.2f} ± {res_['psnr_std'][k]:.2f}")
            row.append("-" if res_["ssim_mean"] is None else f"{res_['ssim_mean'][k]:.4f} ± {res_['ssim_std'][k]:.4f}")
        table.add_row(*row)
    out.print(table)


def _print_comparison(reports) -> None:
    """One row per initialisation: size of what a fitted file stores, and quality after the last step."""
    table = Table(title=f"after {reports[0].steps} steps", title_justify="left")
    for col in ("init", "density", "values"):
        table.add_column(col, justify="left" if col == "init" else "right")
    names = list(reports[0].results)
    for name in names:
        table.add_column(f"PSNR {name}", justify="right")
    for r in reports:
        table.add_row(r.init, f"{r.density:.4f}", f"{r.values:,}",
                      *(f"{r.results[n]['psnr_mean'][-1]:.2f}" if n in r.results else "-" for n in names))
    out.print(table)


def main() -> None:
    app(prog_name="nfit")


if __name__ == "__main__":
    sys.exit(main())
