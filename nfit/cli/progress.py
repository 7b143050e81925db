"""Progress displays: rich bars on a terminal, plain periodic lines elsewhere (a log file,
nohup), with the time left from a smoothed rate."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from nfit.cli.app import err

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
               description: str | None = None, visible: bool | None = None, total: float | None = None,
               **fields) -> None:
        t = self.tasks[task]
        if total is not None:
            t.total = total
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


def progress_display(*columns, enabled: bool = True):
    """A rich Progress on a terminal, plain periodic lines elsewhere (or nothing when disabled)."""
    if enabled and not err.is_terminal:
        return _Lines(*columns, console=err)
    return Progress(*columns, TimeElapsedColumn(), console=err, disable=not enabled)


def _gb(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class _Display:
    """A display over a rich Progress (or its plain-lines stand-in), started and stopped with it."""

    progress: Any

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


class FitProgress(_Display):
    """A bar per batch (step, loss, PSNR, speed, time left), and one over the files when many."""

    def __init__(self, enabled: bool, files: int = 0):
        self.last = None
        self.progress = progress_display(
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

    def plan(self, files: int) -> None:
        """The number of files, once known; a bar over them only when there are several."""
        self.progress.update(self.files, total=files, visible=files > 0)
        self.file_rate = _Rate()

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
            if info.step >= steps and info.seconds_left is None and info.step - rate.done > 1:
                # a target reached (or a time budget spent) before the last step: fill the bar, keep the rate
                self.progress.update(task, completed=steps, left=_duration(0))
                return
            rate.add(info.step)
            tiles = "" if info.tiles is None else (
                f"tiles {info.tiles[2]:,}  " if info.tiles[1] - info.tiles[0] == info.tiles[2]
                else f"tiles {info.tiles[0] + 1:,}-{info.tiles[1]:,} of {info.tiles[2]:,}  ")
            left = rate.left(steps)
            if info.seconds_left is not None and rate.per_step is not None:  # a time budget may end it sooner
                left = _duration(min(info.seconds_left, max(0, steps - info.step) * rate.per_step))
            if info.bound and left != "-":  # a target PSNR may end it sooner: the steps left are a bound
                left = f"at most {left}"
            self.progress.update(task, completed=info.step, stats=f"{tiles}loss {info.loss:.2e}  PSNR {info.psnr:6.2f} dB",
                                 rate=_rate_text(rate.per_step), left=left)

        return on_step


class RenderProgress:
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
            self.progress = progress_display(TextColumn("[bold]render"), BarColumn(),
                                             TextColumn("{task.percentage:>3.0f}%"), TextColumn("left {task.fields[left]}"))
            self.progress.__enter__()
            self.task = self.progress.add_task("render", total=total, left="-")
            self.rate = _Rate()
        self.rate.add(done)
        self.progress.update(self.task, completed=done, left=self.rate.left(total))


class TrainProgress(_Display):
    """One bar over outer steps (updated every step): loss, train PSNR, speed, time left, peak
    memory, last validation PSNR; one line each for the memory plan and the time estimate."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress = progress_display(
            TextColumn("[bold]meta-train"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  train {task.fields[psnr]} dB  val {task.fields[val]} dB"),
            TextColumn("{task.fields[rate]}  left {task.fields[left]}  mem {task.fields[mem]}  {task.fields[ckpt]}"),
            enabled=enabled,
        )
        self.task = None
        self.rate = _Rate()

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
                                               val="-", rate="", left="-", mem="-", ckpt="")
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
        elif event.kind == "checkpoint":
            self.progress.update(self.task, ckpt=f"saved step {event.step} at {v['time']}")
        elif event.kind == "validating":
            self.progress.update(self.task, description="validating")
        elif event.kind == "val":
            self.progress.update(self.task, val=f"{v['val_psnr']:.2f}", description="")
        elif event.kind == "round":
            self.progress.update(self.task, description=f"round {v['level']}/{v['rounds']} density {v['density']:.3f}")
            self._say(f"round {v['level']}/{v['rounds']}: pruned to density {v['density']:.4f} ({v['alive']:,} weights)")
        elif event.kind == "warning":
            self._say(f"nfit: warning: {v['message']}")
