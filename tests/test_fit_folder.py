"""Fitting folders: streaming in bounded memory, each output written when done, a bad
file losing nothing else, --skip-existing, and the summary with exit code 3."""

import json
import weakref

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

import nfit.api
from nfit.api import fit_files
from nfit.cli import app
from nfit.cli.app import EXIT_SOME_FAILED
from nfit.config import FieldOptions, FitConfig
from nfit.errors import InputError, OutputError
from nfit.fieldfile import load_field

runner = CliRunner()
TINY_FIELD = FieldOptions(width=8, depth=2)
TINY = ["--steps", "1", "--width", "8", "--depth", "2", "--device", "cpu"]


def make_folder(folder, n=12, shape=(8, 8), bad=(5,), odd=(7,)):
    """n tiny images; ``bad`` indices are text files named .png, ``odd`` ones another shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        if i in bad:
            path.write_text("not an image")
        else:
            iio.imwrite(path, rng.integers(0, 256, size=(*(shape if i not in odd else (6, 10)), 3), dtype=np.uint8))
        files.append(path)
    return files


def test_streaming_holds_at_most_a_batch_and_writes_as_it_goes(tmp_path, monkeypatch):
    files = make_folder(tmp_path / "in", n=14, bad=(5,), odd=(2, 9))
    outputs = [tmp_path / "out" / f.with_suffix(".nf").name for f in files]
    (tmp_path / "out").mkdir()
    alive, peak, written_at_read = set(), [0], []
    real_read = nfit.api.read_signal

    def counting_read(path, options=None):
        written_at_read.append(sum(o.exists() for o in outputs))
        signal = real_read(path, options)
        key = id(signal)
        alive.add(key)
        weakref.finalize(signal, alive.discard, key)
        peak[0] = max(peak[0], len(alive))
        return signal

    monkeypatch.setattr(nfit.api, "read_signal", counting_read)
    reported = []
    outcomes = fit_files(files, outputs, FitConfig(steps=1, batch_size=3, device="cpu"), TINY_FIELD,
                         keep_going=True, on_outcome=lambda o: reported.append((o.input, o.output.exists())))
    assert peak[0] <= 3  # decoded signals held at once: at most one batch, whatever the folder size
    assert written_at_read[-1] >= 9  # outputs were on disk long before the last file was read
    assert all(exists for src, exists in reported if src != files[5])  # each reported output already written
    assert [o.input for o in outcomes] == files  # input order
    assert [o.status for o in outcomes] == ["failed" if i == 5 else "fitted" for i in range(14)]
    assert isinstance(outcomes[5].error, InputError) and str(files[5]) in str(outcomes[5].error)
    assert not outputs[5].exists() and all(o.exists() for i, o in enumerate(outputs) if i != 5)
    assert load_field(outputs[2]).shape == (6, 10) and load_field(outputs[0]).shape == (8, 8)
    assert all(not hasattr(o, "params") and o.bytes == o.output.stat().st_size for o in outcomes if o.status == "fitted")


def test_without_keep_going_the_first_failure_raises(tmp_path):
    files = make_folder(tmp_path / "in", n=3, bad=(1,), odd=())
    with pytest.raises(InputError, match="img_001"):
        fit_files(files, [f.with_suffix(".nf") for f in files], FitConfig(steps=1, device="cpu"), TINY_FIELD)


def test_a_failed_write_loses_only_that_file(tmp_path, monkeypatch):
    files = make_folder(tmp_path / "in", n=4, bad=(), odd=())
    outputs = [f.with_suffix(".nf") for f in files]
    real_save = nfit.api.save_field

    def disk_full_for_one(nf, path):
        if path == outputs[1]:
            raise OutputError(path, "cannot write (No space left on device)")
        return real_save(nf, path)

    monkeypatch.setattr(nfit.api, "save_field", disk_full_for_one)
    outcomes = fit_files(files, outputs, FitConfig(steps=1, device="cpu"), TINY_FIELD, keep_going=True)
    assert [o.status for o in outcomes] == ["fitted", "failed", "fitted", "fitted"]
    assert "No space left" in str(outcomes[1].error) and not outputs[1].exists()


def test_cli_folder_summary_skip_existing_and_exit_code(tmp_path):
    make_folder(tmp_path / "in" / "sub", n=4, bad=(1,), odd=())
    (tmp_path / "in" / "top.png").write_bytes((tmp_path / "in" / "sub" / "img_000.png").read_bytes())
    out = tmp_path / "out"
    r = runner.invoke(app, ["fit", str(tmp_path / "in"), "-O", str(out), *TINY, "--json"])
    assert r.exit_code == EXIT_SOME_FAILED == 3, r.output
    rows = json.loads(r.stdout)
    assert [row["status"] for row in rows] == ["fitted", "failed", "fitted", "fitted", "fitted"]
    assert rows[1]["error"].startswith(str(tmp_path / "in" / "sub" / "img_001.png"))
    assert "5 file(s): 4 fitted, 0 skipped, 1 failed" in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("nfit: failed: ")] == [f"nfit: failed: {rows[1]['error']}"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nf")) == [
        "sub/img_000.nf", "sub/img_002.nf", "sub/img_003.nf", "top.nf"]  # subfolders mirrored
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nf")}

    (tmp_path / "in" / "sub" / "img_001.png").write_bytes((tmp_path / "in" / "top.png").read_bytes())  # repaired
    r = runner.invoke(app, ["fit", str(tmp_path / "in"), "-O", str(out), *TINY, "--skip-existing", "--json"])
    assert r.exit_code == 0, r.output
    assert [row["status"] for row in json.loads(r.stdout)] == ["skipped", "fitted", "skipped", "skipped", "skipped"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # existing outputs untouched
    assert (out / "sub" / "img_001.nf").exists()


def test_single_file_keeps_the_one_line_error(tmp_path):
    make_folder(tmp_path, n=1, bad=(0,), odd=())
    r = runner.invoke(app, ["fit", str(tmp_path / "img_000.png"), "-o", str(tmp_path / "a.nf"), *TINY])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "img_000.png" in r.stderr


def test_colliding_outputs_are_refused_before_any_work(tmp_path):
    make_folder(tmp_path / "in", n=1, bad=(), odd=())
    (tmp_path / "in" / "img_000.jpg").write_bytes(b"x")
    r = runner.invoke(app, ["fit", str(tmp_path / "in"), "-O", str(tmp_path / "out"), *TINY])
    assert r.exit_code == 2 and "same output" in r.stderr and not list((tmp_path / "out").rglob("*.nf"))
