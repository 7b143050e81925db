"""A user's first hour: inputs are never destroyed, outputs nfit did not write are not replaced,
errors about paths are one line with exit code 2, progress informs (also in a log file),
meta-train fits its step to the free memory, resumes extend, and size mismatches are said."""

import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nfit
import nfit.cli.progress as progress
from nfit import memory
from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.errors import ConfigError, NfitWarning
from nfit.runs import load_init
from nfit.signals import MODALITIES
from nfit.train import meta_train

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
RES = 12
TINY = ["--width", "16", "--depth", "3"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("nfit: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # progress lines may come before it
    assert "Traceback" not in result.output and "internal error" not in result.output


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    shutil.copy(DATA / "chelsea_48x32.png", path)
    return path


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """16 real 16x16 crops of a committed photo."""
    folder = tmp_path_factory.mktemp("faces")
    pixels = iio.imread(DATA / "chelsea_48x32.png")[..., :3]
    for i in range(16):
        y, x = (i // 4) * 5, (i % 4) * 10
        iio.imwrite(folder / f"crop_{i:02d}.png", np.ascontiguousarray(pixels[y : y + 16, x : x + 16]))
    return folder


def train(data, run_dir, steps=4, **kwargs):
    cfg = TrainConfig(steps=steps, batch_size=4, log_every=1, val_every=2, ckpt_every=2, test_steps=2, device="cpu",
                      micro_batch=kwargs.pop("micro_batch", None))
    data_cfg = DataConfig(res=kwargs.pop("res", RES), workers=0, val_fraction=0.25, val_limit=4)
    return meta_train(data, run_dir, cfg, data_cfg, FieldOptions(width=16, depth=3), {"inner_steps": 2}, **kwargs)


# ---------------------------------------------------------------------------- never destroy an input


@pytest.mark.parametrize("how", ["same", "other-extension", "symlink", "hardlink"])
def test_fit_never_writes_over_its_input(photo, tmp_path, how):
    before = photo.read_bytes()
    target = {"same": photo, "other-extension": tmp_path / "b.png"}.get(how, tmp_path / "link.nf")
    if how == "symlink":
        target.symlink_to(photo)
    elif how == "hardlink":
        os.link(photo, target)
    one_line_error(run("fit", photo, "-o", target, "--steps", 1, *TINY))
    assert photo.read_bytes() == before
    assert not (tmp_path / "b.png").exists()


def test_fit_replaces_only_its_own_files(photo, tmp_path):
    foreign = tmp_path / "notes.nf"
    foreign.write_text("my notes")
    one_line_error(run("fit", photo, "-o", foreign, "--steps", 1, *TINY))
    assert foreign.read_text() == "my notes"
    assert run("fit", photo, "-o", foreign, "--steps", 1, "--force", *TINY).exit_code == 0
    assert nfit.load(foreign).shape == (32, 48)
    assert run("fit", photo, "-o", foreign, "--steps", 2, *TINY).exit_code == 0  # ours now: replaced
    assert nfit.load(foreign).summary["steps"] <= 2


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".wav", ".flac", ".mp4"])
def test_render_marks_its_outputs_and_replaces_only_those(tmp_path, suffix):
    source = {".png": DATA / "chelsea_48x32.png", ".jpg": DATA / "rocket_48x32.jpg",
              ".wav": next((DATA / "audio").glob("*.wav")), ".flac": next((DATA / "audio").glob("*.wav")),
              ".mp4": next((DATA / "video").glob("*.mp4"))}[suffix]
    modality = MODALITIES[nfit.signals.modality_for(source).name]
    options = nfit.config.SignalOptions(frames=2) if suffix == ".mp4" else None
    nf = nfit.fit(source, steps=1, width=8, depth=2, options=options)
    nf.save(tmp_path / "x.nf")
    copy = tmp_path / f"copy{suffix}"
    shutil.copy(source, copy)  # a user's file of the output's name
    assert not modality.written_by_nfit(copy)
    before = copy.read_bytes()
    one_line_error(run("render", tmp_path / "x.nf", "-o", copy))
    assert copy.read_bytes() == before
    fresh = tmp_path / f"fresh{suffix}"
    assert run("render", tmp_path / "x.nf", "-o", fresh).exit_code == 0
    assert modality.written_by_nfit(fresh)
    assert run("render", tmp_path / "x.nf", "-o", fresh).exit_code == 0  # its own render: replaced
    assert run("render", tmp_path / "x.nf", "-o", copy, "--force").exit_code == 0
    assert modality.written_by_nfit(copy)


def test_sixteen_bit_png_renders_are_marked(tmp_path):
    values = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 80).astype(np.uint16)
    from nfit.signals.image import write_image, written_by_nfit

    write_image(tmp_path / "a.png", values, "png")
    assert written_by_nfit(tmp_path / "a.png")
    assert np.array_equal(nfit.signals.image.read_image(tmp_path / "a.png")[0],
                          values.astype(np.float32) / 65535)  # the mark leaves the pixels alone


def test_meta_train_refuses_a_run_inside_its_data(faces, tmp_path):
    one_line_error(run("meta-train", faces, "-o", faces / "run", "--steps", 1))
    one_line_error(run("meta-train", faces, "-o", faces, "--steps", 1))
    assert not (faces / "run").exists() and not (faces / "run.json").exists()


def test_meta_train_keeps_other_programs_files(faces, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "preview.png").write_bytes(b"my picture")
    with pytest.raises(ConfigError, match="--force"):
        train(faces, folder, steps=1)
    assert (folder / "preview.png").read_bytes() == b"my picture"
    train(faces, folder, steps=1, force=True)
    assert load_init(folder).train["steps"] == 1


def test_a_run_that_died_before_its_first_checkpoint_starts_again(faces, tmp_path):
    run_dir = tmp_path / "run"

    def die(event):
        if event.kind == "tick":
            raise RuntimeError("killed")  # as a crash: no checkpoint written

    with pytest.raises(RuntimeError):
        train(faces, run_dir, steps=4, on_event=die)
    assert (run_dir / "run.json").exists() and not (run_dir / "checkpoint.safetensors").exists()
    events = []
    result = train(faces, run_dir, steps=2, on_event=events.append)  # the same command: starts again
    assert result.step == 2
    assert any(e.kind == "warning" and "starting it again" in e.values["message"] for e in events)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [0, 2]  # nothing left of the first attempt

    with pytest.raises(RuntimeError):  # --resume starts it again too, from its run.json (it used to refuse)
        train(faces, tmp_path / "again", steps=4, on_event=die)
    events = []
    assert meta_train(None, tmp_path / "again", resume=True, on_event=events.append).step == 4
    assert any(e.kind == "warning" and "starting it again" in e.values["message"] for e in events)


# ---------------------------------------------------------------------------- paths: one line, exit 2


def test_output_folders_that_cannot_be_made_are_one_line(photo, tmp_path, faces):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(run("fit", photo, "-O", blocker / "out", "--steps", 1))
    one_line_error(run("meta-train", faces, "-o", blocker / "run", "--steps", 1))


def test_an_oserror_naming_a_path_is_exit_2(monkeypatch, photo, tmp_path):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out.nf"))

    monkeypatch.setattr(nfit.api, "save_field", refuse)
    result = run("fit", photo, "-o", tmp_path / "out.nf", "--steps", 1, *TINY)
    one_line_error(result)
    assert "Permission denied" in result.output


# ---------------------------------------------------------------------------- memory and micro-batches


def test_step_memory_arithmetic():
    m = memory.StepMemory(fixed=100, per_signal=1000, available=3500)
    assert m.need(3) == 3100 and m.largest_fitting(8) == 3 and m.largest_fitting(2) == 2
    assert memory.StepMemory(0, 5000, 3000).largest_fitting(8) == 0
    assert memory.StepMemory(0, 1000, 500).units_fitting(100) == 50


def test_measure_step_finds_a_linear_cost():
    """A step that holds 200 kB per unit: the estimate for 2,000 units is ~400 MB, not counting the intercept."""
    held = []

    def step(n: int) -> None:
        block = np.ones(n * 50_000, dtype=np.float32)  # 200 kB per unit, touched
        held.append(block.sum())

    estimate = memory.measure_step(step, 2000, torch.device("cpu"))
    if estimate is None:
        pytest.skip("no /proc memory accounting here")
    assert 0.7 * 400e6 < estimate.per_signal < 1.3 * 400e6, estimate


def test_meta_train_picks_a_micro_batch_that_fits(faces, tmp_path, monkeypatch):
    real = memory.measure_step

    def small_machine(step, units, device):
        real(step, units, device)  # the probes run as they would
        return memory.StepMemory(0, 1000, 2500)  # room for two signals of a batch of four

    monkeypatch.setattr("nfit.train.measure_step", small_machine)
    events = []
    train(faces, tmp_path / "auto", steps=2, on_event=events.append)
    plan = next(e.values for e in events if e.kind == "memory")
    assert plan["micro_batch"] == 2 and plan["chosen"]
    meta = json.loads((tmp_path / "auto" / "checkpoint.json").read_text())
    assert meta["micro_batch"] == 2
    train(faces, tmp_path / "given", steps=2, micro_batch=2)
    for k, v in load_init(tmp_path / "auto").params.items():
        assert torch.equal(v, load_init(tmp_path / "given").params[k]), k  # the same steps, bit for bit


def test_meta_train_says_what_fits_when_nothing_does(faces, tmp_path, monkeypatch):
    monkeypatch.setattr("nfit.train.measure_step", lambda step, units, device: memory.StepMemory(0, 4 * 10**9, 10**9))
    with pytest.raises(ConfigError, match=r"--res 6 would fit"):  # a quarter of the samples: half the side
        train(faces, tmp_path / "run", steps=1)
    result = run("meta-train", faces, "-o", tmp_path / "cli", "--res", RES, "--steps", 1)
    one_line_error(result)
    assert "--res 6" in result.output


# ---------------------------------------------------------------------------- resume extends, time adds up


def test_resume_with_steps_sets_a_target_that_lasts(faces, tmp_path):
    run_dir = tmp_path / "run"

    def stop_at(n):
        def on_event(event):
            if event.kind == "tick" and event.step == n:
                raise KeyboardInterrupt
        return on_event

    assert train(faces, run_dir, steps=4, on_event=stop_at(2)).interrupted
    first = json.loads((run_dir / "checkpoint.json").read_text())["seconds"]
    result = meta_train(None, run_dir, TrainConfig(steps=8), resume=True, on_event=stop_at(5))
    assert result.interrupted and result.step == 5
    assert json.loads((run_dir / "run.json").read_text())["train"]["steps"] == 8
    result = meta_train(None, run_dir, resume=True)
    assert result.step == 8 and not result.interrupted
    assert load_init(run_dir).train["seconds"] > first  # training time accumulates over the resumes
    with pytest.raises(ConfigError, match="complete at step 8"):
        meta_train(None, run_dir, resume=True)


# ---------------------------------------------------------------------------- say what changed


def test_meta_train_warns_when_it_upscales(faces, tmp_path):
    events = []
    train(faces, tmp_path / "run", steps=1, res=24, on_event=events.append)  # the crops are 16x16
    said = [e.values["message"] for e in events if e.kind == "warning"]
    assert any("upscaled" in m and "--res 16" in m for m in said), said


def test_fit_warns_when_an_init_is_used_far_from_its_size(faces, tmp_path, photo):
    train(faces, tmp_path / "run", steps=1)  # trained at 12x12; the photo is 48x32
    with pytest.warns(NfitWarning, match="trained at 12x12"):
        nfit.fit(photo, init=tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NfitWarning)
        nfit.fit(photo, init=tmp_path / "run", options=nfit.config.SignalOptions(res=14))  # 14x9: near 12x12
    result = run("fit", photo, "--init", tmp_path / "run", "-o", tmp_path / "p.nf")
    assert result.exit_code == 0 and "nfit: warning: fitting image of 32x48" in result.output


def test_fit_res_resizes_images(photo, tmp_path):
    assert run("fit", photo, "--res", 24, "-o", tmp_path / "s.nf", "--steps", 1, *TINY).exit_code == 0
    assert nfit.load(tmp_path / "s.nf").shape == (16, 24)  # longest side 24, aspect kept


def test_info_says_who_wrote_the_file_and_how_big_it_is_against_the_source(photo, tmp_path):
    assert run("fit", photo, "-o", tmp_path / "p.nf", "--steps", 1, *TINY).exit_code == 0
    data = json.loads(run("info", tmp_path / "p.nf", "--json").output)
    assert data["nfit_version"] == nfit.__version__ and data["source_bytes"] == photo.stat().st_size
    assert data["raw_bytes"] == 32 * 48 * 3
    text = " ".join(run("info", tmp_path / "p.nf").output.split())  # as read, whatever the terminal's wrapping
    assert f"written by nfit {nfit.__version__}" in text and "the source file's" in text


# ---------------------------------------------------------------------------- progress


def test_durations_and_rates_read_well():
    assert progress._duration(42) == "42 s" and progress._duration(185) == "3 min 05 s"
    assert progress._duration(7440) == "2 h 04 min" and progress._duration(9.5 * 86400) == "9 d 12 h"
    assert progress._rate_text(0.5) == "2.0 step/s" and progress._rate_text(82.0) == "82.00 s/step"
    assert progress._rate_text(1 / 250) == "250 step/s" and progress._rate_text(None) == ""


def test_the_time_left_follows_a_smoothed_rate():
    rate = progress._Rate()
    for step in range(1, 11):
        rate.add(step, seconds=2.0)
    assert rate.per_step == pytest.approx(2.0) and rate.left(20) == "20 s"
    rate.add(11, seconds=20.0)  # one slow step (a validation) moves it a little
    assert 2.0 < rate.per_step < 5.0


def test_progress_lines_when_stderr_is_a_file(photo, faces, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    result = run("fit", photo, "-o", tmp_path / "p.nf", "--steps", 3, *TINY)
    assert result.exit_code == 0
    lines = [ln for ln in result.output.splitlines() if "elapsed" in ln and ": coding" not in ln]
    assert lines and "3/3" in lines[-1] and "PSNR" in lines[-1]
    coding = [ln for ln in result.output.splitlines() if "elapsed" in ln and ": coding" in ln]  # fine-tuning
    assert not coding or "10/10" in coding[-1]
    for target, bound in ((60, True), (0, False)):  # a target may end the fit sooner: the time left is a bound
        result = run("fit", photo, "-o", tmp_path / f"t{target}.nf", "--steps", 3, "--target-psnr", target,
                     "--tile", 16, "--init", "random")
        assert result.exit_code == 0, result.output
        lines = [ln for ln in result.output.splitlines() if "elapsed" in ln and "tiles" in ln]
        assert lines and any("left at most" in ln for ln in lines) == bound
    result = run("meta-train", faces, "-o", tmp_path / "run", "--res", RES, "--steps", 4, "--batch-size", 4,
                 "--width", 16, "--depth", 3, "--inner-steps", 2, "--workers", 0)
    assert result.exit_code == 0, result.output
    assert any("meta-train" in ln and "4/4" in ln and "loss" in ln for ln in result.output.splitlines())
    assert "memory: one outer step needs about" in result.output
    assert "steps left" in result.output  # the time estimate


def test_lines_heartbeat_prints_while_a_step_runs(monkeypatch):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.05)
    printed = []
    console = type("C", (), {"print": lambda self, text, **kw: printed.append(text)})()
    from rich.progress import MofNCompleteColumn, TextColumn

    with progress._Lines(TextColumn("job"), MofNCompleteColumn(), console=console) as lines:
        lines.add_task("job", total=10)
        time.sleep(0.4)  # no update at all: a long step
    assert len(printed) >= 2 and all("0/10" in p for p in printed)


# ---------------------------------------------------------------------------- denormals


def test_computing_flushes_denormals_and_restores_the_mode(photo, monkeypatch):
    from nfit.device import flush_denormals, flushing_denormals

    assert not flushing_denormals()  # the processor's default, which nfit leaves as it found it
    with flush_denormals():
        assert flushing_denormals() and torch.tensor([1e-40]).mul(1.0).item() == 0.0
    assert not flushing_denormals()
    seen = []
    fitting = sys.modules["nfit.fit"]  # (nfit.fit is the function)
    full_pass = fitting.full_pass  # every optimisation step of every fit, whole or tiled
    monkeypatch.setattr(fitting, "full_pass", lambda *a, **k: (seen.append(flushing_denormals()), full_pass(*a, **k))[1])
    nfit.fit(photo, steps=1, width=8, depth=2)
    assert seen and all(seen) and not flushing_denormals()
    seen.clear()
    result = run("fit", photo, "-o", photo.with_suffix(".nf"), "--steps", 1, *TINY)
    assert result.exit_code == 0 and seen and all(seen) and not flushing_denormals()


def test_denormal_values_do_not_slow_a_step():
    """A step of a SIREN layer whose inputs are denormal takes at most 2x a normal one (on
    CPUs that trap denormals it took 180x without flushing)."""
    from nfit.device import flush_denormals

    w = torch.randn(256, 256)
    x = torch.randn(4096, 256)

    def median_time(inputs):
        times = []
        for _ in range(7):
            t = time.perf_counter()
            torch.sin(inputs @ w)
            times.append(time.perf_counter() - t)
        return sorted(times)[3]

    with flush_denormals():
        normal = median_time(x)
        tiny = median_time(x * 1e-39)
    assert tiny < 2 * normal + 2e-3


def test_a_long_render_shows_progress(photo, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "RENDER_BAR_AFTER", 0.0)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    assert run("fit", photo, "-o", tmp_path / "p.nf", "--steps", 1, *TINY).exit_code == 0
    result = run("render", tmp_path / "p.nf", "-o", tmp_path / "big.png", "--res", 96)
    assert result.exit_code == 0
    assert any(ln.startswith("render") and "100%" in ln for ln in result.output.splitlines()), result.output


def test_the_bar_says_when_the_last_checkpoint_was_written(monkeypatch, capsys):
    from nfit.train import TrainEvent

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    data = {"root": "d", "train": 4, "val": 0, "modality": "image", "shape": [8, 8], "channels": 3, "rate": None}
    with progress.TrainProgress(enabled=True) as bar:
        bar(TrainEvent("start", 0, 9, {"data": data, "device": "cpu", "processes": 1, "params": 10}))
        bar(TrainEvent("checkpoint", 3, 9, {"path": "RUN/checkpoint.safetensors", "time": "12:34:56"}))
        bar(TrainEvent("tick", 4, 9, {"loss": 0.1, "seconds": 1.0, "peak_memory": 2**30, "train_psnr": 20.0}))
    assert "saved step 3 at 12:34:56" in capsys.readouterr().err
