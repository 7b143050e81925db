"""Audio and video through the whole pipeline: fit, write, read, render, meta-train, eval.

The readers and writers have their own tests (test_audio_io.py, test_video_io.py) and
NeRV its own (test_nerv.py); these check that every command treats a sound clip and a
video as it treats a photo, on the small real files in tests/data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

import nfit
from nfit.cli import app
from nfit.config import AdaptConfig, SignalOptions
from nfit.errors import InputError
from nfit.fields import build_field, stack_params, unbatch_params
from nfit.fit import fit_sgd
from nfit.meta import build_strategy
from nfit.meta.inner import context_scores, top_context
from nfit.signals import read_signal
from nfit.signals.video import probe_video, read_video

DATA = Path(__file__).parent / "data"
WAV = DATA / "audio" / "digit1_8k.wav"
STEREO = DATA / "audio" / "swash_stereo_24bit.flac"
MP4 = DATA / "video" / "carphone_88x72.mp4"
TINY = {"width": 32, "depth": 3}
TINY_CLI = ["--width", "32", "--depth", "3"]
TINY_NERV = '{"strides": [2, 2], "channels": [8, 8], "base_channels": 8, "mlp_width": 32, "pe_levels": 8}'
runner = CliRunner()


# ---------------------------------------------------------------------------- audio


@pytest.mark.parametrize("name", ["digit1_8k.wav", "digit1_8k.ogg", "digit1_8k.mp3", "digit1_8k.m4a",
                                  "swash_stereo_24bit.flac"])
def test_every_audio_format_fits_and_round_trips(tmp_path, name):
    nf = nfit.fit(DATA / "audio" / name, steps=5, **TINY)
    signal = read_signal(DATA / "audio" / name)
    assert (nf.modality, nf.shape, nf.channels, nf.rate) == ("audio", signal.shape, signal.channels, signal.rate)
    # time scaled for 1,024-sample windows; one field over a clip keeps GradNCP's audio coordinates
    assert nf.field_config["in_dim"] == 1 and nf.tiling.tile == (1024,) and nf.field_config["coord_scale"] == 10.0
    assert nfit.fit(DATA / "audio" / name, steps=1, tile=0, **TINY).field_config["coord_scale"] == 50.0
    nf.save(tmp_path / "a.nf")
    back = nfit.load(tmp_path / "a.nf")
    assert back.rate == nf.rate and back.shape == nf.shape
    torch.testing.assert_close(back.render(), nf.render())


def test_audio_renders_at_any_sample_rate(tmp_path):
    nf = nfit.fit(WAV, steps=30, **TINY)  # 8 kHz, 7290 samples
    native = nfit.render(nf)
    assert native.shape == (7290, 1)
    doubled = nfit.render(nf, sample_rate=16_000)
    assert doubled.shape == (14_580, 1)
    # the same continuous field: every other sample of the 16 kHz render sits between two 8 kHz ones
    assert (doubled[::2] - native).abs().mean() < (native - native.mean()).abs().mean()
    for suffix, rate in ((".wav", None), (".flac", 22_050)):
        path, shape = nfit.render_to_file(nf, tmp_path / f"out{suffix}", sample_rate=rate, device="cpu")
        info = sf.info(str(path))
        assert info.samplerate == (rate or 8000) and info.frames == shape[0] and info.subtype == "PCM_16"
    written, _ = sf.read(str(tmp_path / "out.wav"), dtype="float32")
    np.testing.assert_allclose((written + 1) / 2, native[:, 0].numpy(), atol=2 / 65535)


def test_stereo_is_two_channels_and_resampling_and_duration_apply_on_read(tmp_path):
    nf = nfit.fit(STEREO, steps=3, options=SignalOptions(sample_rate=8000, duration=0.1), **TINY)
    assert (nf.shape, nf.channels, nf.rate) == ((800,), 2, 8000.0)


def test_audio_cli_fit_info_render(tmp_path):
    clip = tmp_path / "clip.wav"
    shutil.copy(WAV, clip)
    r = runner.invoke(app, ["fit", str(clip), "--steps", "3", *TINY_CLI])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(tmp_path / "clip.nf")])
    assert r.exit_code == 0 and "8000 Hz" in r.output and "audio" in r.output
    source = clip.read_bytes()
    r = runner.invoke(app, ["render", str(tmp_path / "clip.nf"), "--sample-rate", "4000"])
    assert r.exit_code == 0, r.output
    # default output: beside the .nf, as clip_render.wav; never the source clip.wav it was fitted from
    assert sf.info(str(tmp_path / "clip_render.wav")).samplerate == 4000
    assert clip.read_bytes() == source


def test_audio_meta_train_eval_and_fit_resamples_to_the_init(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(6):  # the same digit, shifted: six real clips of one folder
        values, rate = sf.read(str(WAV), dtype="int16")
        sf.write(str(folder / f"d{i}.wav"), np.roll(values, 300 * i), rate, subtype="PCM_16")
    run = tmp_path / "run"
    r = runner.invoke(app, ["meta-train", str(folder), "-o", str(run), "--steps", "2", "--batch-size", "2",
                            "--inner-steps", "2", "--test-steps", "2", "--sample-rate", "4000", "--duration", "0.25",
                            "--workers", "0", *TINY_CLI])
    assert r.exit_code == 0, r.output
    init = nfit.runs.load_init(run)
    assert (init.modality, init.shape, init.rate) == ("audio", (1000,), 4000.0)
    report = nfit.evaluate(run, folder, config=AdaptConfig(steps=2))
    assert report.shape == (1000,) and report.signals == 6 and report.results["rescaled"]["ssim_mean"] is None
    nf = nfit.fit(WAV, init=run)  # an 8 kHz file: resampled to the 4 kHz the init was trained at
    assert nf.rate == 4000.0 and nf.shape == (3645,) and nf.init["sha256"] == init.sha256
    sparse = tmp_path / "sparse"  # Meta-SparseINR on sound: the dense run's grid and rate carry over
    r = runner.invoke(app, ["meta-train", str(folder), "-o", str(sparse), "--algo", "sparse", "--from", str(run),
                            "--rounds", "1", "--steps-per-round", "1", "--workers", "0"])
    assert r.exit_code == 0, r.output
    nf = nfit.fit(WAV, init=sparse, density=0.8)
    assert nf.rate == 4000.0 and nf.mask is not None and nf.n_values < nf.n_params


# ---------------------------------------------------------------------------- video


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".avi", ".mov", ".mkv"])
def test_every_video_container_fits(suffix):
    nf = nfit.fit(MP4.with_suffix(suffix), steps=2, options=SignalOptions(frames=4, res=16), **TINY)
    assert (nf.modality, nf.shape, nf.channels) == ("video", (4, 16, 16), 3)
    assert nf.rate == pytest.approx(30000 / 1001) and nf.summary["ssim"] is not None  # SSIM per frame


def test_video_renders_to_mp4_webm_and_frames_at_any_size_and_rate(tmp_path):
    nf = nfit.fit(MP4, steps=5, options=SignalOptions(frames=4, stride=2), **TINY)
    assert nf.shape == (4, 72, 88) and nf.rate == pytest.approx(30000 / 1001 / 2)
    path, shape = nfit.render_to_file(nf, tmp_path / "big.mp4", res=176, device="cpu")
    info = probe_video(path)
    assert shape == (4, 144, 176) and (info.frames, info.height, info.width) == (4, 144, 176)
    path, shape = nfit.render_to_file(nf, tmp_path / "fast.webm", fps=nf.rate * 2, device="cpu")
    values, fps = read_video(path)
    assert values.shape == (8, 72, 88, 3) and fps == pytest.approx(nf.rate * 2, rel=1e-3)
    path, shape = nfit.render_to_file(nf, tmp_path / "frames", device="cpu")
    pngs = sorted(path.glob("*.png"))
    assert len(pngs) == 4
    import imageio.v3 as iio

    expected = nfit.render(nf)  # the PNG frames are the field's values, quantised
    np.testing.assert_allclose(iio.imread(pngs[2]) / 255.0, expected[2].numpy(), atol=0.5 / 255 + 1e-6)


def test_video_render_streams_one_frame_at_a_time(monkeypatch, tmp_path):
    from nfit.signals import video

    nf = nfit.fit(MP4, steps=1, options=SignalOptions(frames=3, res=16), **TINY)
    seen = []
    real = video.write_video

    def spy(path, frames, fmt, fps, **kw):
        assert not isinstance(frames, (list, tuple, np.ndarray))  # a generator: frames are made as written
        def watch():
            for f in frames:
                seen.append(f.shape)
                yield f
        return real(path, watch(), fmt, fps, **kw)

    monkeypatch.setattr(video, "write_video", spy)
    nfit.render_to_file(nf, tmp_path / "o.mp4", res=32, device="cpu")
    assert seen == [(32, 32, 3)] * 3


def test_nerv_fits_a_real_video_and_renders_at_another_size(tmp_path):
    r = runner.invoke(app, ["fit", str(MP4), "-o", str(tmp_path / "v.nf"), "--field", "nerv", "--field-config", TINY_NERV,
                            "--res", "16", "--frames", "4", "--steps", "30", "--lr", "1e-2"])
    assert r.exit_code == 0, r.output
    nf = nfit.load(tmp_path / "v.nf")
    assert nf.field_name == "nerv" and nf.shape == (4, 16, 16) and nf.summary["psnr"] > 18
    assert nfit.render(nf, res=32).shape == (4, 32, 32, 3)
    r = runner.invoke(app, ["render", str(tmp_path / "v.nf"), "-o", str(tmp_path / "v.webm"), "--fps", "10"])
    assert r.exit_code == 0, r.output


def _nerv_batch(frames=4, side=8, signals=3):
    cfg = {"frame_height": side, "frame_width": side, "strides": [2, 2], "channels": [8, 8], "base_channels": 8,
           "mlp_width": 16, "pe_levels": 4}
    field = build_field("nerv", cfg)
    theta = field.init_params(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    clips = torch.rand(signals, frames, side, side, 3, generator=gen)
    return field, theta, (frames, side, side), field.to_units(clips)


def test_gradncp_prunes_nerv_by_frame_and_batches_equal_a_loop():
    field, theta, shape, targets = _nerv_batch()
    coords = field.unit_coords(shape)  # [T, 1]: one coordinate per frame
    params = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in theta.items()}
    index = top_context(context_scores(field, params, coords, targets), 0.5)
    assert index.shape == (3, 2)  # gamma 0.5 of 4 frames: 2 whole frames per signal
    strategy = build_strategy("gradncp", {"inner_steps": 2, "gamma": 0.5, "boot_steps": 1})
    theta_ = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    batched = strategy.outer_loss(field, theta_, coords, targets)
    grads = torch.autograd.grad(batched.loss, list(theta_.values()))
    for i in range(3):
        one = strategy.outer_loss(field, theta_, coords, targets[i : i + 1])
        torch.testing.assert_close(one.mse, batched.mse[i : i + 1], rtol=1e-4, atol=1e-7)
    loop = [torch.autograd.grad(strategy.outer_loss(field, theta_, coords, targets[i : i + 1]).loss,
                                list(theta_.values())) for i in range(3)]
    for g, *parts in zip(grads, *loop):
        torch.testing.assert_close(g, sum(parts) / 3, rtol=1e-3, atol=1e-6)


def test_rescaled_sgd_on_nerv_batched_equals_one_at_a_time():
    field, theta, shape, targets = _nerv_batch()
    config = AdaptConfig(steps=3, gamma=0.5)
    batched = fit_sgd(field, theta, targets, shape, config)
    for i in range(3):
        alone = fit_sgd(field, theta, targets[i : i + 1], shape, config)
        for k, v in unbatch_params(batched.params, i).items():
            torch.testing.assert_close(v, alone.params[k][0], rtol=1e-4, atol=1e-6)
    assert stack_params([unbatch_params(batched.params, i) for i in range(3)]).keys() == theta.keys()


def test_video_meta_train_with_nerv_then_fit_from_it(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for suffix in (".mp4", ".webm", ".avi", ".mov"):
        shutil.copy(MP4.with_suffix(suffix), folder / f"c{suffix}")
    run = tmp_path / "run"
    r = runner.invoke(app, ["meta-train", str(folder), "-o", str(run), "--field", "nerv", "--field-config", TINY_NERV,
                            "--steps", "2", "--batch-size", "2", "--inner-steps", "2", "--test-steps", "2",
                            "--frames", "4", "--res", "16", "--workers", "0", "--val-fraction", "0.25"])
    assert r.exit_code == 0, r.output
    assert (run / "preview.png").is_file()  # the middle frames of the validation clips
    init = nfit.runs.load_init(run)
    assert (init.modality, init.shape, init.field_name) == ("video", (4, 16, 16), "nerv")
    nf = nfit.fit(MP4, init=run, options=SignalOptions(frames=4))  # frames resized to the NeRV's 16x16
    assert nf.shape == (4, 16, 16) and nf.init["sha256"] == init.sha256
    sparse = tmp_path / "sparse"
    r = runner.invoke(app, ["meta-train", str(folder), "-o", str(sparse), "--algo", "sparse", "--from", str(run),
                            "--rounds", "1", "--steps-per-round", "1", "--workers", "0", "--val-fraction", "0.25"])
    assert r.exit_code == 0, r.output
    about = nfit.info(sparse)  # pruned convolutions; a NeRV has no dense-narrow width
    assert about["sparsity"]["density"] == pytest.approx(0.8, abs=1e-3) and about["sparsity"]["dense_narrow_width"] is None


# ---------------------------------------------------------------------------- one interface


def test_a_folder_of_mixed_modalities_needs_modality(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(WAV, folder / "a.wav")
    shutil.copy(DATA / "camera_32.png", folder / "b.png")
    r = runner.invoke(app, ["meta-train", str(folder), "-o", str(tmp_path / "run"), "--steps", "1"])
    assert r.exit_code == 2 and "1 audio, 1 image" in r.stderr and "--modality" in r.stderr
    assert not (tmp_path / "run").exists()
    r = runner.invoke(app, ["fit", str(folder), "-O", str(tmp_path / "out"), "--modality", "audio", "--steps", "1",
                            *TINY_CLI])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.nf"]


def test_modality_override_and_init_mismatch_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="camera_32.png: .*audio"):
        read_signal(DATA / "camera_32.png", "audio")
    nf_path = tmp_path / "v.nf"
    r = runner.invoke(app, ["render", str(nf_path)])
    assert r.exit_code == 2
    nfit.fit(MP4, steps=1, options=SignalOptions(frames=2, res=16), **TINY).save(nf_path)
    r = runner.invoke(app, ["render", str(nf_path), "-o", str(tmp_path / "v.wav")])
    assert r.exit_code == 2 and "cannot write a video as .wav" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v.wav").exists()
