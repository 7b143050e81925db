"""Meta-training under faults: SIGKILL and resume, a checkpoint write that fails
midway (a full disk), a kill between the two checkpoint renames, and non-finite
losses under --nan-policy stop and skip."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nfit.train
from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.errors import TrainingError
from nfit.fieldfile import file_sha256
from nfit.runs import load_init
from nfit.train import meta_train

runner = CliRunner()
ARGS = dict(algo="maml", batch_size=2, log_every=1, val_every=1000, ckpt_every=2, test_steps=1, device="cpu")
CLI_ARGS = ["--algo", "maml", "--res", "8", "--batch-size", "2", "--width", "8", "--depth", "2", "--inner-steps", "1",
            "--log-every", "1", "--val-fraction", "0", "--workers", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    photo = iio.imread(os.path.join(os.path.dirname(__file__), "data", "chelsea_48x32.png"))[..., :3]
    for i in range(8):
        y, x = (i // 4) * 12, (i % 4) * 10
        iio.imwrite(folder / f"crop_{i}.png", np.ascontiguousarray(photo[y : y + 8, x : x + 8]))
    return folder


def train(data, run, steps, nan_policy="stop", on_event=None, ckpt_every=2):
    cfg = TrainConfig(steps=steps, nan_policy=nan_policy, **{**ARGS, "ckpt_every": ckpt_every})
    return meta_train(data, run, cfg, DataConfig(res=8, workers=0, val_fraction=0), FieldOptions(width=8, depth=2),
                      {"inner_steps": 1}, on_event=on_event)


def same_params(a, b):
    pa, pb = load_init(a).params, load_init(b).params
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def temporaries(run):
    return [p.name for p in run.iterdir() if p.name.startswith(".")]


def _kill_after_a_checkpoint(faces, run, steps: int, *options: str, min_step: int = 0) -> int:
    """Run `nfit meta-train` in a real process, SIGKILL it once a checkpoint of at least ``min_step``
    exists, and return that checkpoint's step."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same arithmetic as this process
    proc = subprocess.Popen([sys.executable, "-m", "nfit", "meta-train", str(faces), "-o", str(run), *CLI_ARGS,
                             "--steps", str(steps), *options], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.json").exists() or json.loads((run / "checkpoint.json").read_text())["step"] < min_step:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return json.loads((run / "checkpoint.json").read_text())["step"]


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_resumes_exactly(tmp_path, faces):
    """A scheduler's stop (SIGTERM to every process of the job, data workers included) ends a run as
    Ctrl-C does, even in a process started in the background (where SIGINT is ignored): a checkpoint
    at the step reached, exit code 130."""
    steps, run = 300, tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    args = [*CLI_ARGS[:CLI_ARGS.index("--workers")], "--workers", "1", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "nfit", "meta-train", str(faces), "-o", str(run), *args,
                             "--steps", str(steps), "--ckpt-every", "100000"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, as a scheduler does
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    stopped_at = json.loads((run / "checkpoint.json").read_text())["step"]
    assert stopped_at >= 3 and f"interrupted at step {stopped_at}" in err.decode()
    assert meta_train(None, run, resume=True).step == steps
    train(faces, tmp_path / "straight", steps, ckpt_every=100000)
    assert same_params(run, tmp_path / "straight")


def test_sigkill_then_resume_is_bit_identical(tmp_path, faces):
    steps, run = 300, tmp_path / "killed"
    killed_at = _kill_after_a_checkpoint(faces, run, steps, "--ckpt-every", "2")
    assert 2 <= killed_at < steps

    result = meta_train(None, run, resume=True)
    assert result.step == steps and not temporaries(run)
    train(faces, tmp_path / "straight", steps)
    assert same_params(run, tmp_path / "straight")
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))


def test_checkpoints_by_time_then_sigkill_and_resume_is_bit_identical(tmp_path, faces):
    """--ckpt-minutes: checkpoints come by time when steps are too few for --ckpt-every; kill -9
    loses at most that much, and --resume continues exactly."""
    steps, run = 300, tmp_path / "killed"
    killed_at = _kill_after_a_checkpoint(faces, run, steps, "--ckpt-every", "100000", "--ckpt-minutes", "0.002",
                                         min_step=2)
    assert 2 <= killed_at < steps
    assert meta_train(None, run, resume=True).step == steps
    train(faces, tmp_path / "straight", steps, ckpt_every=100000)
    assert same_params(run, tmp_path / "straight")


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, faces, monkeypatch):
    run = tmp_path / "run"
    real = nfit.runs.save_tensors
    snapshot = {}

    def disk_fills_up(path, tmp, tensors, meta):
        if snapshot:  # the second checkpoint: half the bytes, then ENOSPC
            tmp.write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, tmp, tensors, meta)

    def remember(event):
        if event.kind == "checkpoint" and not snapshot:
            snapshot.update({p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".json", ".safetensors")})

    monkeypatch.setattr(nfit.runs, "save_tensors", disk_fills_up)
    monkeypatch.setattr("nfit.cli.progress.TrainProgress.__call__", lambda self, event: remember(event))
    r = runner.invoke(app, ["meta-train", str(faces), "-o", str(run), *CLI_ARGS, "--steps", "6", "--ckpt-every", "2"])
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("nfit: error: ") and "checkpoint.safetensors" in last and "No space left" in last, last
    assert {"checkpoint.safetensors", "checkpoint.json", "init.safetensors"} <= set(snapshot)
    for name, data in snapshot.items():  # the step-2 files, byte for byte
        assert (run / name).read_bytes() == data, name
    assert not temporaries(run)

    monkeypatch.undo()
    meta_train(None, run, resume=True)
    train(faces, tmp_path / "straight", 6)
    assert same_params(run, tmp_path / "straight")


def test_resume_after_a_kill_between_renames(tmp_path, faces):
    """A kill can leave a temporary, a checkpoint.json one checkpoint behind and a metrics line cut short."""
    run = tmp_path / "run"
    train(faces, run, 2)
    (run / ".checkpoint.safetensors.k1ll3d.tmp.safetensors").write_bytes(b"\0" * 10)
    (run / ".init.safetensors.k1ll3d.tmp.safetensors").write_bytes(b"\0" * 10)
    stale = json.loads((run / "checkpoint.json").read_text())
    (run / "checkpoint.json").write_text(json.dumps({**stale, "step": 0, "sha256": "0" * 64}))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 3, "lo')
    seen = {}

    def at_start(event):
        if event.kind == "start":
            seen.update(json.loads((run / "checkpoint.json").read_text()), temporaries=temporaries(run))

    meta_train(None, run, TrainConfig(steps=4), resume=True, on_event=at_start)
    assert seen["step"] == 2 and seen["temporaries"] == []  # repaired before training went on
    assert seen["sha256"] != "0" * 64
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["step"] == 4 and meta["sha256"] == file_sha256(run / "checkpoint.safetensors")
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    train(faces, tmp_path / "straight", 4)
    assert same_params(run, tmp_path / "straight")


def inject_nan(monkeypatch, at_steps):
    """Make the outer gradient and loss of the given (1-based) steps NaN, as a diverging run would."""
    real, calls = nfit.train._accumulate, [0]

    def accumulate(outer, coords, targets, micro):
        calls[0] += 1
        loss, mse = real(outer, coords, targets, micro)
        if calls[0] in at_steps:
            for p in outer.parameters():
                p.grad.fill_(float("nan"))
            loss = loss * float("nan")
        return loss, mse

    monkeypatch.setattr(nfit.train, "_accumulate", accumulate)


def test_nan_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, faces, monkeypatch):
    run = tmp_path / "run"
    inject_nan(monkeypatch, {3})
    r = runner.invoke(app, ["meta-train", str(faces), "-o", str(run), *CLI_ARGS, "--steps", "6", "--ckpt-every", "2"])
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nfit: error: {run}: non-finite loss (nan)") and "at step 3" in last, last
    assert "checkpoint of step 2 is kept" in last and "Traceback" not in r.output
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 2
    init = load_init(run)
    assert init.train["steps"] == 2 and all(torch.isfinite(v).all() for v in init.params.values())
    assert max(json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()) == 2
    assert not temporaries(run)

    monkeypatch.undo()  # the fault was transient: resuming finishes the run exactly
    meta_train(None, run, resume=True)
    train(faces, tmp_path / "straight", 6)
    assert same_params(run, tmp_path / "straight")


def test_nan_before_any_checkpoint(tmp_path, faces, monkeypatch):
    inject_nan(monkeypatch, {1})
    with pytest.raises(TrainingError, match="at step 1; stopped, no checkpoint yet"):
        train(faces, tmp_path / "run", 6)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_nan_policy_skip_counts_and_goes_on(tmp_path, faces, monkeypatch):
    inject_nan(monkeypatch, {2, 4})
    warnings = []
    result = train(faces, tmp_path / "run", 6, nan_policy="skip",
                   on_event=lambda e: warnings.append(e.values["message"]) if e.kind == "warning" else None)
    assert result.step == 6 and result.skipped_steps == 2
    assert len(warnings) == 2 and "step 2" in warnings[0] and "update skipped" in warnings[0]
    init = load_init(result.run)
    assert init.train["skipped_steps"] == 2 and all(torch.isfinite(v).all() for v in init.params.values())
    rows = [json.loads(x) for x in (result.run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 2, 2, 2]
    # a skipped step changes nothing: steps 1-2 with step 2 skipped equal one clean step
    monkeypatch.undo()
    inject_nan(monkeypatch, {2})
    skipped = train(faces, tmp_path / "two", 2, nan_policy="skip", ckpt_every=100)
    monkeypatch.undo()
    train(faces, tmp_path / "one", 1, ckpt_every=100)
    assert skipped.skipped_steps == 1 and same_params(tmp_path / "two", tmp_path / "one")


def test_nan_policy_is_validated():
    with pytest.raises(nfit.errors.ConfigError, match="--nan-policy"):
        TrainConfig(nan_policy="ignore")


def test_resume_refuses_a_changed_data_folder(tmp_path, faces):
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(faces.iterdir())[:4]:
        (data / f.name).write_bytes(f.read_bytes())
    train(data, tmp_path / "run", 2)
    (data / "new.png").write_bytes((data / "crop_0.png").read_bytes())
    with pytest.raises(nfit.errors.ConfigError, match="data folder changed"):
        meta_train(None, tmp_path / "run", TrainConfig(steps=4), resume=True)


def test_resume_after_a_kill_before_the_first_checkpoint_starts_the_run_again(tmp_path, faces):
    """kill -9 before any checkpoint: --resume starts the run again from its own run.json (it used to
    refuse with "nothing to resume", leaving the user to retype the command) and ends as a straight run."""
    steps, run = 40, tmp_path / "early"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "nfit", "meta-train", str(faces), "-o", str(run), *CLI_ARGS,
                             "--steps", str(steps), "--ckpt-every", "100000", "--ckpt-minutes", "1000"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (run / "checkpoint.json").exists()
    events = []
    assert meta_train(None, run, resume=True, on_event=events.append).step == steps
    assert any("starting it again" in str(e.values) for e in events if e.kind == "warning")
    logged = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # the killed attempt's lines are gone
    train(faces, tmp_path / "straight", steps, ckpt_every=100000)
    assert same_params(run, tmp_path / "straight")
