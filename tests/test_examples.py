"""The examples run (in quick mode), as a new user would run them."""

import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio

ROOT = Path(__file__).parents[1]


def test_quickstart(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "chelsea.nf").exists()
    assert iio.imread(tmp_path / "chelsea_512.png").shape == (512, 512, 3)
