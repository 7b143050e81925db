"""The command line: the jobs end to end, and bad input as one line, exit 2, no output."""

import json
import os
import subprocess
import sys

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from nfit.cli import app
from nfit.fieldfile import FORMAT_VERSION

runner = CliRunner()
FAST = ["--steps", "40", "--width", "32", "--depth", "3", "--device", "cpu"]


def test_fit_render_info(tmp_path, photo):
    nf = tmp_path / "photo.nf"
    r = runner.invoke(app, ["fit", str(photo), "-o", str(nf), *FAST, "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["output"] == str(nf) and summary["steps"] == 40 and summary["psnr"] > 15
    assert summary["bytes"] == nf.stat().st_size and summary["bits_per_pixel"] > 0

    r = runner.invoke(app, ["render", str(nf), "--res", "96", "-o", str(tmp_path / "big.png")])
    assert r.exit_code == 0, r.output
    assert iio.imread(tmp_path / "big.png").shape == (64, 96, 3)

    r = runner.invoke(app, ["info", str(nf), "--json"])
    data = json.loads(r.stdout)
    assert data["modality"] == "image" and data["shape"] == [32, 48] and data["channels"] == 3
    assert data["field"]["config"]["width"] == 32 and data["parameters"] > 0 and data["format_version"] == FORMAT_VERSION
    assert data["fit"]["steps"] == 40 and data["bytes"] == nf.stat().st_size

    r = runner.invoke(app, ["info", str(nf)])
    assert r.exit_code == 0 and "siren" in r.stdout and "parameters" in r.stdout


def test_fit_many_into_a_directory(tmp_path, photo, data_dir):
    out = tmp_path / "out"
    r = runner.invoke(app, ["fit", str(photo), str(data_dir / "camera_32.png"), "-O", str(out), *FAST, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["camera_32.nf", "chelsea_48x32.nf"]
    assert [row["output"] for row in rows] == [str(out / "chelsea_48x32.nf"), str(out / "camera_32.nf")]


def test_target_psnr_stops_early(tmp_path, photo):
    r = runner.invoke(app, ["fit", str(photo), "-o", str(tmp_path / "a.nf"), *FAST, "--steps", "500",
                            "--target-psnr", "18", "--json"])
    summary = json.loads(r.stdout)
    assert summary["steps"] < 500 and summary["psnr"] >= 18
    assert "short of" not in r.stderr


@pytest.mark.parametrize("field, hint", [(["--width", "32", "--depth", "3"], "raise --steps"),
                                         (["--field", "grid"], "raise --steps, or fit it in tiles")])
def test_a_file_short_of_its_target_psnr_is_said_in_one_line(tmp_path, photo, field, hint):
    r = runner.invoke(app, ["fit", str(photo), "-o", str(tmp_path / "a.nf"), *field, "--steps", "3",
                            "--target-psnr", "60", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if "short of" in line]
    assert len(lines) == 1 and lines[0].startswith(f"nfit: {tmp_path / 'a.nf'}: ") and hint in lines[0], r.stderr
    assert "short of --target-psnr 60 (stopped by steps)" in lines[0]


def _nfit(*args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-m", "nfit", *args], capture_output=True, text=True, cwd=cwd, env=env)


def _bad_inputs(tmp_path, photo):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    (tmp_path / "bad.nf").write_text("not a field")
    good = tmp_path / "good.nf"
    assert runner.invoke(app, ["fit", str(photo), "-o", str(good), "--steps", "2", *FAST[2:]]).exit_code == 0
    return {
        "missing file": (["fit", "nope.png", "-o", "o.nf"], "nope.png: no such file", "o.nf"),
        "zero bytes": (["fit", "empty.png", "-o", "o.nf"], "empty.png: file is empty", "o.nf"),
        "not an image": (["fit", "text.png", "-o", "o.nf"], "text.png: cannot decode", "o.nf"),
        "unwritable output": (["fit", str(photo), "-o", "no/such/dir/o.nf"], "does not exist", "no"),
        "output inside a file": (["fit", str(photo), "-o", "text.png/o.nf"], "not a directory", None),
        "invalid .nf": (["render", "bad.nf", "-o", "o.png"], "bad.nf: not a safetensors file", "o.png"),
        "missing .nf": (["info", "nope.nf"], "nope.nf: no such file", None),
        "bad render format": (["render", "good.nf", "-o", "o.gif"], "cannot write an image as .gif", "o.gif"),
        "no cuda": (["fit", str(photo), "-o", "o.nf", "--device", "tpu"], "unknown device", "o.nf"),
    }


def test_bad_input_is_one_line_exit_2_no_output(tmp_path, photo):
    for name, (args, message, output) in _bad_inputs(tmp_path, photo).items():
        before = sorted(p.name for p in tmp_path.iterdir())
        r = _nfit(*args, cwd=tmp_path)
        assert r.returncode == 2, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nfit: error:") and message in lines[0], (name, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # nothing written, no temp files
        if output:
            assert not (tmp_path / output).exists()


def test_debug_shows_the_traceback(tmp_path):
    r = _nfit("--debug", "info", "nope.nf", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "FieldFileError" in r.stderr


def test_version_and_help(tmp_path):
    r = _nfit("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("nfit ")
    r = runner.invoke(app, ["fit", "--help"])
    assert r.exit_code == 0 and "--target-psnr" in r.stdout and "--steps" in r.stdout


def test_conflicting_options(tmp_path, photo):
    r = runner.invoke(app, ["fit", str(photo), str(photo), "-o", str(tmp_path / "a.nf")])
    assert r.exit_code == 2 and "-O DIR" in r.stderr
    r = runner.invoke(app, ["render", "x.nf", "--res", "5", "--width", "5"])
    assert r.exit_code == 2 and "not both" in r.stderr


@pytest.mark.parametrize("entry", [["nfit"], [sys.executable, "-m", "nfit"]])
def test_entry_points(entry, tmp_path):
    import shutil

    if entry == ["nfit"] and shutil.which("nfit") is None:
        pytest.skip("nfit is not installed as a console script in this environment")
    r = subprocess.run([*entry, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and "meta" not in r.stderr and "fit" in r.stdout
