"""meta-train end to end: the run directory, exact resume, interruption, micro-batches,
two torchrun processes vs one, bad files; then fit --init and eval from the result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.device import tune_cpu_allocator
from nfit.errors import ConfigError, InputError
from nfit.fieldfile import load_field
from nfit.runs import load_init
from nfit.train import meta_train

runner = CliRunner()
RES = 12
TINY_FIELD = FieldOptions(width=16, depth=3)
TINY_ALGO = {"inner_steps": 2}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """16 real 16x16 RGB crops of the committed photos (a folder of training signals)."""
    folder = tmp_path_factory.mktemp("faces")
    photo = iio.imread(ROOT / "tests" / "data" / "chelsea_48x32.png")[..., :3]  # [32, 48, 3]
    for i in range(16):
        y, x = (i // 4) * 5, (i % 4) * 10
        iio.imwrite(folder / f"crop_{i:02d}.png", np.ascontiguousarray(photo[y : y + 16, x : x + 16]))
    return folder


def train(data, run, steps=4, algo="gradncp", **kwargs):
    cfg = TrainConfig(algo=algo, steps=steps, batch_size=4, log_every=1, val_every=2, ckpt_every=2, test_steps=2,
                      device="cpu", **{k: v for k, v in kwargs.items() if k in ("micro_batch", "seed")})
    data_cfg = DataConfig(res=RES, workers=0, val_fraction=0.25, val_limit=4, strict=kwargs.get("strict", False))
    return meta_train(data, run, cfg, data_cfg, TINY_FIELD, TINY_ALGO, on_event=kwargs.get("on_event"))


def params_of(run):
    return load_init(run).params


def assert_same(a, b, exact=True):
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("algo", ["maml", "gradncp"])
def test_run_directory(tmp_path, faces, algo):
    events = []
    result = train(faces, tmp_path / "run", algo=algo, on_event=events.append)
    run = tmp_path / "run"
    assert result.step == 4 and result.init == run / "init.safetensors" and not result.interrupted
    assert {"run.json", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.json", "init.safetensors",
            "preview.png"} <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [0, 2, 4]  # step 0: the untrained init
    assert all(np.isfinite(r["loss"]) and r["peak_memory"] > 0 for r in rows if r["kind"] == "train")
    init = load_init(run)
    assert init.algo["name"] == algo and init.shape == (RES, RES) and init.channels == 3
    assert init.train["steps"] == 4 and init.train["val_psnr"] == result.val_psnr
    assert init.data["train"] == 12 and init.data["val"] == 4 and init.test["steps"] == 2
    assert iio.imread(run / "preview.png").shape == (2 * RES, 4 * RES, 3)  # targets over reconstructions
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and "val" in kinds and kinds.count("step") == 4
    # training moved the initialisation away from the random one
    fresh = train(faces, tmp_path / "zero", algo=algo, steps=1)
    assert not torch.equal(params_of(run)["l0.weight"], params_of(fresh.run)["l0.weight"])


def test_resume_continues_exactly(tmp_path, faces):
    train(faces, tmp_path / "straight", steps=6)
    train(faces, tmp_path / "split", steps=2)
    meta_train(None, tmp_path / "split", TrainConfig(steps=6), resume=True)
    assert_same(params_of(tmp_path / "straight"), params_of(tmp_path / "split"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the log continues without duplicates


def test_interrupt_saves_a_checkpoint_and_resumes(tmp_path, faces):
    def stop_at_3(event):
        if event.kind == "step" and event.step == 3:
            raise KeyboardInterrupt

    result = train(faces, tmp_path / "run", steps=6, on_event=stop_at_3)
    assert result.interrupted and result.step == 3
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 3
    meta_train(None, tmp_path / "run", resume=True)
    train(faces, tmp_path / "straight", steps=6)
    assert_same(params_of(tmp_path / "straight"), params_of(tmp_path / "run"))


def test_micro_batches_give_the_same_step(tmp_path, faces):
    train(faces, tmp_path / "whole", steps=2)
    train(faces, tmp_path / "micro", steps=2, micro_batch=1)
    assert_same(params_of(tmp_path / "whole"), params_of(tmp_path / "micro"), exact=False)


def test_gradient_checkpointing_gives_the_same_run(tmp_path, faces):
    """meta-train --gradient-checkpointing takes the same outer steps, and the run records the setting."""
    args = ["meta-train", str(faces), "--res", str(RES), "--steps", "2", "--width", "16", "--depth", "3",
            "--batch-size", "4", "--workers", "0", "--val-fraction", "0", "--inner-steps", "2", "--device", "cpu"]
    for name, extra in (("plain", []), ("ckpt", ["--gradient-checkpointing"])):
        r = runner.invoke(app, [*args, *extra, "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    assert load_init(tmp_path / "ckpt").algo["config"]["gradient_checkpointing"] is True
    assert load_init(tmp_path / "plain").algo["config"]["gradient_checkpointing"] is False
    assert_same(params_of(tmp_path / "plain"), params_of(tmp_path / "ckpt"), exact=False)
    r = runner.invoke(app, [*args, "--gradient-checkpointing", "--compile", "-o", str(tmp_path / "both")])
    assert r.exit_code == 2 and "--gradient-checkpointing" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "both" / "init.safetensors").exists()


def test_two_processes_equal_one(tmp_path, faces):
    """torchrun with 2 CPU processes (gloo) on the same global batch gives the single-process result."""
    args = ["meta-train", str(faces), "--res", str(RES), "--steps", "3", "--width", "16", "--depth", "3",
            "--batch-size", "4", "--workers", "0", "--val-fraction", "0", "--inner-steps", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "nfit", *args, "-o", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "nfit", *args, "-o", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert load_init(tmp_path / "two").train["processes"] == 2
    assert two.stderr.count("wrote ") == 1  # rank 0 alone reports and writes
    assert_same(params_of(tmp_path / "one"), params_of(tmp_path / "two"), exact=False)


def test_bad_files_are_skipped_or_stop_a_strict_run(tmp_path, faces):
    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(faces.iterdir()):
        (data / f.name).write_bytes(f.read_bytes())
    (data / "broken.png").write_bytes(b"not a png at all")
    warnings = []
    result = train(data, tmp_path / "run", steps=8,
                   on_event=lambda e: warnings.append(e.values["message"]) if e.kind == "warning" else None)
    assert result.step == 8 and result.bad_files == 1
    assert len(warnings) == 1 and "broken.png" in warnings[0]
    with pytest.raises(InputError, match="broken.png"):
        train(data, tmp_path / "strict", steps=8, strict=True)


def test_run_errors(tmp_path, faces):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no media files"):
        train(tmp_path / "empty", tmp_path / "r1")
    train(faces, tmp_path / "r2", steps=1)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(faces, tmp_path / "r2", steps=1)
    with pytest.raises(ConfigError, match="not an nfit run"):
        meta_train(None, tmp_path / "nowhere", resume=True)
    with pytest.raises(ConfigError, match="--gamma"):
        meta_train(faces, tmp_path / "r3", TrainConfig(algo="maml"), algo_options={"gamma": 0.5})


def test_fit_and_eval_from_the_result(tmp_path, faces, data_dir):
    run = tmp_path / "run"
    train(faces, run, steps=2)
    photo = data_dir / "chelsea_48x32.png"
    out = tmp_path / "photo.nf"
    r = runner.invoke(app, ["fit", str(photo), "--init", str(run / "init.safetensors"), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2  # the init's own K_test
    nf = load_field(out, load_init(run))
    assert nf.init["sha256"] == load_init(run).sha256 and nf.summary["method"] == "sgd-rescaled"
    assert nf.shape == (32, 48)  # fitted at the image's own size, not the training grid
    assert nf.field_config == load_init(run).field_config

    r = runner.invoke(app, ["fit", str(photo), "--init", str(run), "-o", str(out), "--no-rescale", "--steps", "3",
                            "--json"])
    assert r.exit_code == 0 and load_field(out, load_init(run)).summary["method"] == "sgd"
    r = runner.invoke(app, ["fit", str(photo), "--init", str(run), "-o", str(out), "--optimizer", "adam",
                            "--steps", "5", "--json"])
    assert r.exit_code == 0 and load_field(out, load_init(run)).summary["method"] == "adam"

    r = runner.invoke(app, ["info", str(run), "--json"])
    assert r.exit_code == 0, r.output
    described = json.loads(r.stdout)
    assert described["kind"] == "init" and described["algo"]["name"] == "gradncp"
    assert described["sha256"] == load_init(run).sha256 and described["parameters"] == 16 * 2 + 16 + 16 * 16 + 16 + 3 * 16 + 3
    r = runner.invoke(app, ["info", str(run)])
    assert r.exit_code == 0 and "initialisation" in r.stdout
    r = runner.invoke(app, ["render", str(run / "init.safetensors"), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "use it with --init" in r.output

    r = runner.invoke(app, ["eval", str(run), str(faces), "--steps", "3", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["signals"] == 16 and report["shape"] == [RES, RES] and report["steps"] == 3
    for name in ("rescaled", "plain"):
        psnr = report["results"][name]["psnr_mean"]
        assert len(psnr) == 4 and psnr[3] > psnr[0]  # fitting improves on the initialisation
        assert len(report["results"][name]["ssim_mean"]) == 4
    r = runner.invoke(app, ["eval", "random", str(faces), "--steps", "2", "--res", "16", "--width", "16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["init_sha256"] is None


def test_init_mismatches_are_one_line_errors(tmp_path, faces, data_dir):
    run = tmp_path / "run"
    train(faces, run, steps=1)
    grey = data_dir / "camera_32.png"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "nfit", "fit", str(grey), "--init", str(run), "-o",
                        str(tmp_path / "g.nf")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "camera_32.png" in r.stderr and "channel" in r.stderr and not (tmp_path / "g.nf").exists()
    nf = tmp_path / "a.nf"
    assert runner.invoke(app, ["fit", str(data_dir / "chelsea_48x32.png"), "-o", str(nf), "--steps", "2",
                               "--width", "8"]).exit_code == 0
    r = runner.invoke(app, ["fit", str(grey), "--init", str(nf), "-o", str(tmp_path / "h.nf")])
    assert r.exit_code == 2 and "not an initialisation" in r.output
    r = runner.invoke(app, ["fit", str(grey), "--init", str(run), "--width", "8", "-o", str(tmp_path / "h.nf")])
    assert r.exit_code == 2 and "decides the field" in r.output
    r = runner.invoke(app, ["meta-train", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no such directory" in r.output and not (tmp_path / "r").exists()


def test_tensorboard_events_when_installed(tmp_path, faces):
    pytest.importorskip("tensorboard")
    train(faces, tmp_path / "run", steps=2)
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_cpu_allocator_tuning_is_optional():
    code = ("import torch; from nfit.device import tune_cpu_allocator as t; "
            "cpu = torch.device('cpu'); print(t(cpu), t(cpu))")
    env = {**os.environ, "NFIT_MALLOC": "system"}
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert off.stdout.split() == ["False", "False"]
    env.pop("NFIT_MALLOC")
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    expected = "True" if sys.platform.startswith("linux") else "False"
    assert on.stdout.split() == [expected, expected]  # idempotent
    assert tune_cpu_allocator(torch.device("meta")) is False  # another device's memory is not glibc's


_KEPT = """
import ctypes, torch
from nfit.device import tune_cpu_allocator
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Info
tune_cpu_allocator(torch.device("cpu"))
torch.ones(16 << 20)  # 64 MB, freed at once
print(mallinfo2().fordblks / (64 << 20))  # of it, what the heap keeps free for reuse
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_allocator_tuning_keeps_freed_memory():
    """A large block, once freed, stays in the heap for the next step, neither unmapped nor trimmed:
    the trim threshold must reach glibc (a value beyond a C int once arrived as 0, which trimmed
    the heap at every free, so each step's activations were faulted in afresh)."""
    def kept(malloc: str | None) -> float:
        env = {k: v for k, v in os.environ.items() if k != "NFIT_MALLOC"} | ({"NFIT_MALLOC": malloc} if malloc else {})
        run = subprocess.run([sys.executable, "-c", _KEPT], env=env, capture_output=True, text=True, check=True)
        return float(run.stdout)

    assert kept("system") < 0.5  # the measure sees the difference: glibc maps a block this large and unmaps it
    assert kept(None) >= 1.0


def test_help_shows_every_default():
    r = runner.invoke(app, ["meta-train", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in ("[default: 10000]", "[default: gradncp 16, maml 4]", "[default: 0.25]", "[default: 256]"):
        assert text in r.output, text
