"""No unpickling anywhere, limits on what a file may declare, and no path from a file's
metadata ever used to write."""

import re
from pathlib import Path

from corpus import field_file, rewrite
from typer.testing import CliRunner

from nfit.cli import app

runner = CliRunner()
PACKAGE = Path(__file__).resolve().parents[1] / "nfit"
# Every way Python or its numeric libraries can run code hidden in a data file.
UNPICKLING = re.compile(r"\btorch\.load\b|\bpickle\b|\bcPickle\b|\bdill\b|\bjoblib\b|\bmarshal\b|allow_pickle\s*=\s*True"
                        r"|\bnp\.load\b|\bnumpy\.load\b|weights_only\s*=\s*False|\bshelve\b")


def test_no_unpickling_in_the_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if UNPICKLING.search(code) and "never unpickles" not in code and "Nothing here unpickles" not in code:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert offenders == []


def test_metadata_paths_are_never_written(tmp_path):
    """The source name in a .nf is for people: rendering without -o writes beside the .nf, as x_render.png."""
    target = tmp_path / "elsewhere" / "owned.png"
    target.parent.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    for source in (str(target), "../elsewhere/owned.png", "[bold]\x1b]0;pwned\x07"):
        nf = rewrite(field_file(tmp_path / "good.nf"), work / "x.nf",
                     edit_meta=lambda m: m["signal"].update(source=source))
        r = runner.invoke(app, ["render", str(nf)])
        assert r.exit_code == 0, r.output
        assert (work / "x_render.png").exists() and not target.exists()
        (work / "x_render.png").unlink()
        r = runner.invoke(app, ["info", str(nf)])
        assert r.exit_code == 0 and "\x1b]0;" not in r.stdout  # shown as text: no terminal control codes
    assert sorted(p.name for p in work.iterdir()) == ["x.nf"]
