"""Reading, resampling and writing audio: every format, the exact PCM mapping, and the bad files."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from nfit.errors import ConfigError, InputError, OutputError
from nfit.signals import audio
from nfit.signals.audio import fit_length, load_clip, output_format, read_audio, resample, write_audio
from nfit.signals.image import quantize

AUDIO = Path(__file__).parent / "data" / "audio"
WAV, FLAC = AUDIO / "digit1_8k.wav", AUDIO / "swash_stereo_24bit.flac"  # 8 kHz mono 16-bit; 44.1 kHz stereo 24-bit


def _sine(freq, rate, seconds=0.25):
    t = np.arange(round(rate * seconds)) / rate
    return (0.5 + 0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[:, None]  # [T, 1] in [0, 1]


@pytest.mark.parametrize("name, frames, channels, rate, bits", [
    ("digit1_8k.wav", 7290, 1, 8000, 16),
    ("swash_stereo_24bit.flac", 11025, 2, 44100, 24),
    ("digit1_8k.ogg", 7290, 1, 8000, 16),
    ("digit1_8k.mp3", 7290, 1, 8000, 16),
    ("digit1_8k.m4a", 7296, 1, 8000, 16),  # AAC through PyAV; MP4 rounds the length up to 7296
])
def test_every_format_reads(name, frames, channels, rate, bits):
    values, got_bits, got_rate = read_audio(AUDIO / name)
    assert values.dtype == np.float32 and values.shape == (frames, channels)
    assert (got_bits, got_rate) == (bits, rate)
    assert 0 <= values.min() and values.max() <= 1
    assert abs(values.mean() - 0.5) < 0.01 and values.std() > 0.02  # centred on silence, and not silent


@pytest.mark.parametrize("ext", [".ogg", ".mp3", ".m4a"])
def test_lossy_decodes_line_up_with_the_source(ext):
    source = read_audio(WAV)[0][:, 0]
    lossy = read_audio(AUDIO / f"digit1_8k{ext}")[0][: len(source), 0]
    assert np.corrcoef(source, lossy)[0, 1] > 0.99  # encoder delay removed: no shift against the WAV


def test_pcm_maps_exactly_onto_quantize_codes():
    values = read_audio(WAV)[0]
    ints = sf.read(WAV, dtype="int16", always_2d=True)[0].astype(np.int64)
    np.testing.assert_array_equal(quantize(values, 16), ints + 32768)
    values = read_audio(FLAC)[0]
    ints = sf.read(FLAC, dtype="int32", always_2d=True)[0].astype(np.int64) >> 8
    np.testing.assert_allclose(values, (ints + 2**23) / (2**24 - 1), rtol=0, atol=1e-7)


def test_stereo_keeps_both_channels():
    values = read_audio(FLAC)[0]
    assert values.shape[1] == 2 and np.abs(values[:, 0] - values[:, 1]).mean() > 0.01


def test_float_wav_is_32_bits_and_clipped(tmp_path):
    path = tmp_path / "f.wav"
    sf.write(path, np.array([[-2.0, 0.0], [0.5, 1.5]], np.float32), 16000, subtype="FLOAT")
    values, bits, rate = read_audio(path)
    np.testing.assert_array_equal(values, [[0.0, 0.5], [0.75, 1.0]])
    assert (bits, rate) == (32, 16000)
    sf.write(path, np.array([[np.nan]], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN"):
        read_audio(path)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("bits", [16, 8])
@pytest.mark.parametrize("source", [WAV, FLAC])
def test_write_read_round_trip_is_bit_exact(tmp_path, fmt, bits, source):
    values, _, rate = read_audio(source)
    codes = quantize(values, bits)
    path = tmp_path / f".out.{fmt}.x1y2.tmp"  # an atomic_output-like name whose suffix is no format
    write_audio(path, codes, fmt, rate, bits)
    assert sf.info(path).format == fmt.upper()
    again, got_bits, got_rate = read_audio(path.rename(path.with_suffix(f".{fmt}")))
    assert (got_bits, got_rate, again.shape) == (bits, rate, values.shape)
    np.testing.assert_array_equal(quantize(again, bits), codes)


def test_write_failures_are_output_errors(tmp_path):
    codes = quantize(read_audio(WAV)[0], 16)
    with pytest.raises(OutputError, match="No such file or directory"):
        write_audio(tmp_path / "missing" / "x.wav", codes, "wav", 8000)
    if os.path.exists("/dev/full"):
        with pytest.raises(OutputError, match="No space left"):
            write_audio(Path("/dev/full"), codes, "wav", 8000)


def test_write_refuses_other_bit_depths(tmp_path):
    codes = quantize(read_audio(WAV)[0], 16)
    with pytest.raises(OutputError, match="16 or 8 bits"):
        write_audio(tmp_path / "x.wav", codes, "wav", 8000, bit_depth=24)


def test_output_format():
    assert output_format(Path("a.WAV")) == "wav" and output_format(Path("b.flac")) == "flac"
    for path in (Path("c.mp3"), Path("noext"), None):
        with pytest.raises(ConfigError, match=r"use \.wav or \.flac"):
            output_format(path)


@pytest.mark.parametrize("frames, rate_in, rate_out", [
    (7290, 8000, 22050), (7291, 8000, 22050), (100001, 44100, 16000), (1, 8000, 16000), (3, 16000, 8000), (7, 3, 2),
])
def test_resample_length_is_exact(frames, rate_in, rate_out):
    values = np.random.default_rng(0).random((frames, 2), dtype=np.float32)
    out = resample(values, rate_in, rate_out)
    assert out.shape == (round(frames * rate_out / rate_in), 2) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1


def test_resample_is_band_limited_and_in_phase():
    tone = _sine(440, 16000)
    down = resample(tone, 16000, 8000)
    mid = slice(200, -200)  # away from the ends, where the filter sees silence
    np.testing.assert_allclose(down[mid], _sine(440, 8000)[mid], atol=1e-3)
    np.testing.assert_allclose(resample(down, 8000, 16000)[400:-400], tone[400:-400], atol=1e-3)
    above_nyquist = resample(_sine(6000, 16000), 16000, 8000)  # 6 kHz cannot exist at 8 kHz: removed, not aliased
    assert np.abs(above_nyquist[mid] - 0.5).max() < 0.01
    assert resample(tone, 16000, 16000) is tone


def test_resample_keeps_channels_apart():
    both = np.concatenate([_sine(440, 16000), _sine(1000, 16000)], axis=1)
    out = resample(both, 16000, 11025)
    np.testing.assert_array_equal(out[:, 1:], resample(both[:, 1:], 16000, 11025))
    assert np.abs(out[:, 0] - out[:, 1]).max() > 0.3


def test_fit_length_crops_or_pads_with_silence():
    values = np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(fit_length(values, 3), values[:3])
    padded = fit_length(values, 8)
    assert padded.shape == (8, 2) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[:5], values)
    np.testing.assert_array_equal(padded[5:], 0.5)


def test_load_clip_mixes_resamples_and_fits():
    clip = load_clip(FLAC, 16000, 0.1, 1)  # stereo 44.1 kHz -> mono 16 kHz, 1600 samples
    assert isinstance(clip, torch.Tensor) and clip.dtype == torch.float32 and clip.shape == (1600, 1)
    whole = resample(read_audio(FLAC)[0].mean(axis=1, keepdims=True), 44100, 16000)
    np.testing.assert_allclose(clip.numpy(), whole[:1600], atol=1e-6)  # resampling only the start changes nothing
    stereo = load_clip(WAV, 8000, 1.5, 2)  # mono -> two equal channels, 0.91 s padded to 1.5 s
    values = read_audio(WAV)[0]
    assert stereo.shape == (12000, 2)
    np.testing.assert_array_equal(stereo[:, 0], stereo[:, 1])
    np.testing.assert_array_equal(stereo[: len(values), 0].numpy(), values[:, 0])
    assert (stereo[len(values):] == 0.5).all()
    assert load_clip(WAV, 16000, None, 1).shape == (14580, 1)


def test_load_clip_refuses_what_it_cannot_mix(tmp_path):
    path = tmp_path / "three.wav"
    sf.write(path, np.zeros((100, 3), np.int16), 8000)
    with pytest.raises(InputError, match="3 channels"):
        load_clip(path, 8000, None, 2)
    with pytest.raises(ConfigError):
        load_clip(WAV, 0, 1.0, 1)


def _bad_files():
    wav, flac = WAV.read_bytes(), FLAC.read_bytes()
    no_channels = bytearray(wav)
    no_channels[22:24] = struct.pack("<H", 0)  # the fmt chunk's channel count
    return {
        "empty.wav": b"",
        "text.wav": b"this is a text file, not a recording\n" * 4,
        "cut_header.wav": wav[:20],
        "header_only.wav": wav[:44],  # a valid header and no samples
        "no_channels.wav": bytes(no_channels),
        "cut_header.flac": flac[:30],
        "cut_half.flac": flac[: len(flac) // 2],
        "text.m4a": b"not an mp4 either\n" * 4,  # through PyAV
    }


def test_bad_files_are_one_line_input_errors(tmp_path):
    for name, data in _bad_files().items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(InputError) as caught:
            read_audio(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value), name


@pytest.mark.parametrize("name", ["digit1_8k.wav", "digit1_8k.m4a"])  # soundfile's and PyAV's paths
def test_declared_length_is_checked_before_decoding(monkeypatch, name):
    monkeypatch.setattr(audio, "MAX_AUDIO_SAMPLES", 1000)
    with pytest.raises(InputError, match="MAX_AUDIO_SAMPLES") as caught:
        read_audio(AUDIO / name)
    assert name in str(caught.value)

