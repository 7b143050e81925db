"""The bad-input corpus (tests/corpus.py) through the CLI and the Python API.

Each bad file: the CLI prints one line naming the file and the reason, exits 2 and
writes nothing (no output, no temporary); the API raises the typed error from
nfit.errors. The CLI runs in-process (CliRunner goes through the same error
handler as a real run); two cases run as real subprocesses as well.
"""

import os
import subprocess
import sys

import pytest
from corpus import BAD_FIELD_FILES, BAD_MEDIA, PHOTO, UNUSUAL_MEDIA, field_file, init_file, rewrite, write
from typer.testing import CliRunner

import nfit
from nfit.cli import app
from nfit.errors import FieldFileError, InputError, NfitError
from nfit.fieldfile import load_field
from nfit.runs import load_init
from nfit.signals import read_signal

runner = CliRunner()
TINY = ["--steps", "1", "--width", "8", "--depth", "2", "--device", "cpu"]


def listing(folder):
    return sorted(p.name for p in folder.rglob("*"))  # hidden temporaries included


def assert_one_line_refusal(folder, args, path, reason, output):
    """The CLI contract for bad input: exit 2, one stderr line naming the file and the reason, nothing written."""
    before = listing(folder)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("nfit: error: ") and str(path) in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    assert listing(folder) == before and not output.exists()


@pytest.mark.parametrize("case", list(BAD_MEDIA))
def test_bad_media(tmp_path, case):
    name, build, reason = BAD_MEDIA[case]
    path = write(tmp_path, name, build())
    out = tmp_path / "out.nf"
    assert_one_line_refusal(tmp_path, ["fit", str(path), "-o", str(out), *TINY], path, reason, out)
    with pytest.raises(InputError, match=reason.replace(".", r"\.")) as info:
        nfit.fit(path, steps=1, width=8, depth=2, device="cpu")
    assert str(path) in str(info.value)


def test_unusual_media_are_read_and_fitted(tmp_path):
    """Valid but unusual images: read as documented, and a folder of them fits (exit 0)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for case, (name, build, (h, w, c, bits)) in UNUSUAL_MEDIA.items():
        s = read_signal(write(folder, name, build()))
        assert (s.shape, s.channels, s.bit_depth) == ((h, w), c, bits), case
        assert 0 <= s.values.min() and s.values.max() <= 1
    r = runner.invoke(app, ["fit", str(folder), "-O", str(tmp_path / "out"), *TINY, "--json"])
    assert r.exit_code == 0, r.output
    for name, *_ in UNUSUAL_MEDIA.values():
        nf = load_field(tmp_path / "out" / (name.rsplit(".", 1)[0] + ".nf"))
        assert nf.summary["steps"] <= 1
    assert load_field(tmp_path / "out" / "deep.nf").bit_depth == 16
    assert load_field(tmp_path / "out" / "one.nf").shape == (1, 1)


def test_meta_train_on_class_folders_of_mixed_kinds(tmp_path):
    """ImageNet's mix in class folders: every unusual image and progressive, grey, RGBA and broken
    files are trained on together; each broken file is named once and counted at the end."""
    from PIL import Image

    from corpus import encode, pixels

    data = tmp_path / "data"
    (data / "n01").mkdir(parents=True)
    (data / "n02").mkdir()
    for name, build, _ in UNUSUAL_MEDIA.values():
        write(data / "n01", name, build())
    photo = Image.fromarray(pixels())
    write(data / "n02", "progressive.JPEG", encode(photo, "JPEG", progressive=True))
    write(data / "n02", "grey.JPEG", encode(photo.convert("L"), "JPEG"))
    write(data / "n02", "rgba.png", encode(photo.convert("RGBA"), "PNG"))
    good = encode(photo, "JPEG")
    write(data / "n02", "truncated.JPEG", good[: len(good) // 3])
    write(data / "n02", "empty.JPEG", b"")
    r = runner.invoke(app, ["meta-train", str(data), "-o", str(tmp_path / "run"), "--res", "8", "--steps", "3",
                            "--batch-size", "10", "--width", "8", "--depth", "2", "--inner-steps", "1",
                            "--algo", "maml", "--val-fraction", "0", "--workers", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    for broken in ("truncated.JPEG", "empty.JPEG"):
        assert sum(broken in line for line in r.output.splitlines()) == 1, r.output  # once, though drawn 3 times
    assert "2 unreadable file(s) skipped" in r.output
    assert load_init(tmp_path / "run").train["steps"] == 3


@pytest.mark.parametrize("case", list(BAD_FIELD_FILES))
def test_bad_field_files(tmp_path, case):
    make, reason = BAD_FIELD_FILES[case]
    bad = make(field_file(tmp_path / "good.nf"), tmp_path / "bad.nf")
    out = tmp_path / "out.png"
    assert_one_line_refusal(tmp_path, ["render", str(bad), "-o", str(out)], bad, reason, out)
    assert_one_line_refusal(tmp_path, ["info", str(bad)], bad, reason, out)
    with pytest.raises(FieldFileError, match=reason) as info:
        nfit.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("case", list(BAD_FIELD_FILES))
def test_bad_init_files(tmp_path, case):
    make, reason = BAD_FIELD_FILES[case]
    bad = make(init_file(tmp_path / "good.safetensors"), tmp_path / "bad.safetensors")
    out = tmp_path / "out.nf"
    assert_one_line_refusal(tmp_path, ["fit", str(PHOTO), "--init", str(bad), "-o", str(out)], bad, reason, out)
    with pytest.raises(FieldFileError, match=reason) as info:
        nfit.fit(PHOTO, init=bad)
    assert str(bad) in str(info.value)
    with pytest.raises(FieldFileError):
        load_init(bad)


def test_mismatched_initialisation_records(tmp_path):
    """A .nf whose recorded init SHA-256 is malformed is refused; a .nf given as --init too."""
    good = field_file(tmp_path / "good.nf")
    bad = rewrite(good, tmp_path / "bad.nf", edit_meta=lambda m: m.update(init={"name": "meta", "sha256": "12ab"}))
    out = tmp_path / "out.png"
    assert_one_line_refusal(tmp_path, ["render", str(bad), "-o", str(out)], bad, "'init' is malformed", out)
    out = tmp_path / "out.nf"
    assert_one_line_refusal(tmp_path, ["fit", str(PHOTO), "--init", str(good), "-o", str(out)], good,
                            "not an initialisation", out)


def test_typed_errors_come_from_one_module():
    import nfit.errors

    for cls in (InputError, FieldFileError, nfit.OutputError, nfit.ConfigError, nfit.TrainingError):
        assert issubclass(cls, NfitError) and cls.__module__ == nfit.errors.__name__


def test_real_processes(tmp_path):
    """Two corpus cases as real `python -m nfit` runs: the exit code and stderr a shell sees."""
    bomb = write(tmp_path, *BAD_MEDIA["png bomb"][:1], BAD_MEDIA["png bomb"][1]())
    nf = BAD_FIELD_FILES["truncated"][0](field_file(tmp_path / "good.nf"), tmp_path / "cut.nf")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for args, path in ((["fit", str(bomb), "-o", "o.nf"], bomb), (["render", str(nf), "-o", "o.png"], nf)):
        before = listing(tmp_path)
        r = subprocess.run([sys.executable, "-m", "nfit", *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0], r.stderr
        assert listing(tmp_path) == before
