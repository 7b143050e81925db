"""The examples run (in quick mode), as a new user would run them."""

import os
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


def test_fit_render_script(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(ROOT / "examples" / "fit_render.sh"), str(tmp_path)], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert iio.imread(tmp_path / "chelsea_512.png").shape == (512, 512, 3)
    assert "default:image" in r.stdout and "tiles of 32 x 32" in r.stdout  # info: the shipped tile init


def test_meta_train_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "meta_train_small.py"), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "run" / "init.safetensors").exists() and "unseen crop after 16 steps" in r.stdout


def test_fit_render_audio_video_script(tmp_path):
    import soundfile as sf

    from nfit.signals.video import probe_video

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run(["bash", str(ROOT / "examples" / "fit_render_audio_video.sh"), str(tmp_path), "3"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "digit_16k.wav")).frames == 2 * sf.info(str(tmp_path / "digit.flac")).frames
    info = probe_video(tmp_path / "carphone_176_60fps.mp4")
    assert (info.frames, info.width, info.height) == (16, 176, 144)
    assert len(list((tmp_path / "carphone_frames").glob("*.png"))) == 8 and "8000 Hz" in r.stdout
