"""Audio files <-> values in [0, 1] of shape [T, C] (samples x channels).

Every nfit signal lives in [0, 1], so that fitting, PSNR and quantisation treat
all modalities alike; a sample x in [-1, 1] is stored as (x + 1) / 2, and
silence is 0.5. Integer PCM is mapped exactly onto the code scale of
:func:`nfit.signals.image.quantize`: a B-bit sample i is the code
u = i + 2^(B-1), value u / (2^B - 1), so that 16-bit WAV and FLAC go
read -> quantize -> :func:`write_audio` -> read bit-exactly.

Reading goes through soundfile (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3),
and through PyAV (FFmpeg) for what libsndfile does not decode (AAC in .m4a or
.aac) or fails on. Before decoding, the frames x channels the header declares
are checked against :data:`nfit.config.MAX_AUDIO_SAMPLES`, so a tiny file
claiming days of audio is refused without allocating anything.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

# soundfile and av are imported where a file is read or written: ~0.3 s to import, which
# commands that touch no audio would pay otherwise.
from nfit._version import SOFTWARE, SOFTWARE_NAME
from nfit.config import MAX_AUDIO_SAMPLES
from nfit.errors import ConfigError, InputError, OutputError
from nfit.signals.reading import decoding

READ_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".m4a", ".aac")
OUTPUT_FORMATS = {".wav": "wav", ".flac": "flac"}
_SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus")  # libsndfile's; the rest go to PyAV
_PCM_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}  # integer subtypes, read exactly
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_LOSSY_BITS = 16  # lossy and companded codecs carry no bit depth; 16 is what they are rendered back to


def _check_length(path: Path, frames: int, channels: int) -> None:
    if frames * channels > MAX_AUDIO_SAMPLES:
        raise InputError(path, f"audio declares {frames:,} frames x {channels} channels, over nfit's limit of "
                               f"{MAX_AUDIO_SAMPLES:,} samples (nfit.config.MAX_AUDIO_SAMPLES)")


def _pcm_to_unit(ints: np.ndarray, bits: int) -> np.ndarray:
    """Left-justified signed integers (int16/int32) holding ``bits``-bit samples -> float32 in [0, 1]."""
    ints = ints >> (ints.dtype.itemsize * 8 - bits)
    # float32 holds every code up to 24 bits exactly; 32-bit codes need float64 on the way.
    work = np.float32 if bits <= 24 else np.float64
    return ((ints.astype(work) + (1 << (bits - 1))) / ((1 << bits) - 1)).astype(np.float32)


def _float_to_unit(x: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(x).all():
        raise InputError(path, "audio contains NaN or infinite samples")
    return ((np.clip(x, -1.0, 1.0) + 1.0) * 0.5).astype(np.float32)  # float files may overshoot full scale


def _read_soundfile(path: Path) -> tuple[np.ndarray, int, int]:
    import soundfile as sf

    with sf.SoundFile(path) as f:  # parses the header only
        frames, channels, rate, subtype = f.frames, f.channels, f.samplerate, f.subtype
        _check_length(path, frames, channels)
        if subtype in _PCM_BITS:
            bits = _PCM_BITS[subtype]
            raw = f.read(dtype="int16" if bits <= 16 else "int32", always_2d=True)
            values = _pcm_to_unit(raw, bits)
        else:
            bits = 32 if subtype in _FLOAT_SUBTYPES else _LOSSY_BITS
            values = _float_to_unit(f.read(dtype="float32", always_2d=True), path)
    # PCM and FLAC declare their length exactly (MP3's is an estimate); fewer frames means a cut-off file.
    if (subtype in _PCM_BITS or subtype in _FLOAT_SUBTYPES) and len(values) < frames:
        raise InputError(path, f"truncated: the header declares {frames:,} frames, the file holds {len(values):,}")
    return values, bits, rate


def _read_pyav(path: Path) -> tuple[np.ndarray, int, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise InputError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        if channels < 1 or rate < 1:
            raise InputError(path, f"audio stream has {channels} channels at {rate} Hz")
        # The length is the duration (stream.frames counts packets, not samples); a raw .aac has
        # only the container's estimate, or none, so the decoded samples are counted too.
        declared = round(float(stream.duration * stream.time_base) * rate) if stream.duration else 0
        _check_length(path, declared or round((container.duration or 0) / 1e6 * rate), channels)
        parts, total = [], 0
        for frame in container.decode(stream):
            a = frame.to_ndarray()  # planar: [C, n]; packed: [1, n * C]
            parts.append(a.T if frame.format.is_planar else a.reshape(-1, channels))
            total += frame.samples
            _check_length(path, total, channels)
        frame_size, lossless = stream.codec_context.frame_size, stream.codec_context.codec.lossless
    if not parts:
        raise InputError(path, "no audio samples")
    raw = np.concatenate(parts)
    # Decoders also hand back the encoder's padding of the last frame (AAC in MP4), which
    # the stream's duration leaves out: cut to it when the excess is within one frame.
    if 0 < declared < len(raw) <= declared + frame_size:
        raw = raw[:declared]
    if raw.dtype == np.uint8:
        return _pcm_to_unit((raw.astype(np.int16) - 128) << 8, 8), 8, rate
    if raw.dtype in (np.int16, np.int32):
        bits = raw.dtype.itemsize * 8  # FFmpeg gives 24-bit as left-justified s32: read right, reported as 32
        return _pcm_to_unit(raw, bits), bits if lossless else _LOSSY_BITS, rate
    return _float_to_unit(raw.astype(np.float32), path), 32 if lossless else _LOSSY_BITS, rate


def _reason(err: BaseException) -> str:
    # libsndfile and FFmpeg both repeat the path in str(err); the bare reason reads better after ours.
    text = getattr(err, "error_string", None) or getattr(err, "strerror", None) or str(err) or type(err).__name__
    return text.strip().splitlines()[0][:160] if text.strip() else type(err).__name__


def _decode(path: Path) -> tuple[np.ndarray, int, int]:
    first = None
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        try:
            return _read_soundfile(path)
        except (InputError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - PyAV may still decode what libsndfile cannot
            first = err
    try:
        return _read_pyav(path)
    except (InputError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - for a file libsndfile claims, its reason is the telling one
        raise InputError(path, f"cannot decode as audio ({_reason(first or err)})") from None


def read_audio(path: str | Path) -> tuple[np.ndarray, int, int]:
    """Decode an audio file. Returns values float32 [T, C] in [0, 1], the bit depth and the sample rate (Hz).

    Every failure is an :class:`InputError` naming the file: libsndfile and FFmpeg
    raise many types, and all mean "not audio we can read".
    """
    path = Path(path)
    with decoding(path, "audio"):
        with open(path, "rb") as f:  # the OS's own errors first, with their plain reasons
            if not f.read(1):
                raise InputError(path, "file is empty (0 bytes)")
        values, bits, rate = _decode(path)
    if values.shape[0] < 1 or values.shape[1] < 1:
        raise InputError(path, f"no audio samples ({values.shape[0]} frames x {values.shape[1]} channels)")
    return values, bits, rate


def resample(values: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """[T, C] in [0, 1] at ``rate_in`` Hz -> [round(T * rate_out / rate_in), C] at ``rate_out``, band-limited.

    libswresample (through PyAV) does the work, one channel at a time so that no
    channel layout can remix them. Its output length is off by a sample or two,
    and it returns nothing at all for a few dozen input samples, so the input
    gets a tail of silence and the output is cut to the exact length.
    """
    if rate_in == rate_out:
        return values
    if rate_in < 1 or rate_out < 1:
        raise ValueError(f"sample rates must be positive, not {rate_in} -> {rate_out}")
    import av

    length, channels = round(len(values) * rate_out / rate_in), values.shape[1]
    tail = np.zeros(64 * math.ceil(rate_in / rate_out), np.float32)  # longer than the filter's reach
    out = np.empty((length, channels), np.float32)
    for c in range(channels):
        # Resample x in [-1, 1], not the [0, 1] encoding: beyond the ends the filter
        # sees zeros, which must be silence, not a jump to -1.
        x = np.concatenate([values[:, c].astype(np.float32) * 2 - 1, tail])
        frame = av.AudioFrame.from_ndarray(x[None], format="fltp", layout="mono")
        frame.sample_rate = rate_in
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate_out)
        pieces = [f.to_ndarray()[0] for f in resampler.resample(frame) + resampler.resample(None)]
        y = np.concatenate(pieces)[:length] if pieces else np.zeros(0, np.float32)
        if len(y) < length:  # not seen with the tail, but never hand back a short signal
            y = np.concatenate([y, np.full(length - len(y), y[-1] if len(y) else 0.0, np.float32)])
        out[:, c] = y
    return np.clip((out + 1) * 0.5, 0.0, 1.0)  # the filter rings a little beyond full scale


def fit_length(values: np.ndarray, length: int) -> np.ndarray:
    """[T, C] -> [length, C]: keep the start, or pad the end with silence (0.5)."""
    if len(values) >= length:
        return values[:length]
    return np.concatenate([values, np.full((length - len(values), values.shape[1]), 0.5, values.dtype)])


def output_format(path: Path | None) -> str:
    """'wav' or 'flac' from the output path's extension; anything else is a ConfigError."""
    ext = Path(path).suffix.lower() if path is not None else ""
    if ext in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[ext]
    raise ConfigError(path, f"cannot write audio as {ext or 'a file without extension'} "
                            f"(use {' or '.join(OUTPUT_FORMATS)})")


def write_audio(path: Path, samples: np.ndarray, fmt: str, sample_rate: int, bit_depth: int = 16) -> None:
    """Write quantised samples [T, C] (``quantize(values, bit_depth)``: uint16, or uint8) as ``fmt``.

    Code u stands for u / (2^B - 1) in [0, 1], i.e. the signed sample u - 2^(B-1);
    writes exactly ``path`` (the caller's atomic temporary), so the format is
    given to libsndfile rather than guessed from the name.
    """
    import soundfile as sf

    if (bit_depth, samples.dtype) not in ((16, np.uint16), (8, np.uint8)):
        raise OutputError(path, f"audio is written at 16 or 8 bits from samples quantised to them, not at "
                                f"{bit_depth} bits from {samples.dtype}")
    # libsndfile scales int16 to the file's width: 8-bit codes go in as the top byte, which it keeps exactly.
    pcm = (samples.astype(np.int32) - (1 << (bit_depth - 1))) << (16 - bit_depth)
    subtype = "PCM_16" if bit_depth == 16 else ("PCM_U8" if fmt == "wav" else "PCM_S8")  # 8-bit WAV is unsigned
    try:
        with sf.SoundFile(path, "w", sample_rate, pcm.shape[1], subtype=subtype, format=fmt.upper()) as f:
            f.software = SOFTWARE  # the mark a later render looks for before replacing this file
            f.write(pcm.astype(np.int16))
    except RuntimeError as err:
        # libsndfile says only "System error" for a full disk or a missing folder; C's errno says which.
        code = getattr(getattr(sf, "_ffi", None), "errno", 0) if getattr(err, "code", None) == 2 else 0
        raise OutputError(path, f"cannot write ({os.strerror(code) if code else _reason(err)})") from None


def load_clip(path: Path, sample_rate: int | None, duration: float | None, channels: int) -> torch.Tensor:
    """A dataset example: float32 tensor [T, channels] in [0, 1] at ``sample_rate`` (None: the file's own,
    which needs no ``duration``: clips of several rates do not batch, but tiles cut from them do).

    Channels are mixed down by their mean or up by repeating mono. With a
    ``duration`` (seconds) every clip has T = round(duration * sample_rate):
    longer files are cut after their start, shorter ones padded with silence,
    so that clips stack into a batch.
    """

    if (channels < 1 or sample_rate is not None and sample_rate < 1
            or duration is not None and (sample_rate is None or round(duration * sample_rate) < 1)):
        raise ConfigError(None, f"need a positive sample rate, channel count and duration, not "
                                f"{sample_rate} Hz, {channels} channels, {duration} s")
    values, _, rate = read_audio(path)
    sample_rate = sample_rate or rate
    have = values.shape[1]
    if have != channels:
        if channels == 1:
            values = values.mean(axis=1, keepdims=True)
        elif have == 1:
            values = np.repeat(values, channels, axis=1)
        else:
            raise InputError(path, f"has {have} channels; nfit mixes down to mono or up from mono, not to {channels}")
    if duration is not None:
        length = round(duration * sample_rate)
        # Resample only what is kept, plus a margin past the filter's reach so the kept part is unchanged.
        values = resample(values[: math.ceil(length * rate / sample_rate) + 128 * math.ceil(rate / sample_rate)],
                          rate, sample_rate)
        values = fit_length(values, length)
    else:
        values = resample(values, rate, sample_rate)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def written_by_nfit(path: Path) -> bool:
    """Whether an audio file carries the mark nfit's renders get (libsndfile's "software" string)."""
    import soundfile as sf

    try:
        with sf.SoundFile(path) as f:
            return (f.software or "").startswith(SOFTWARE_NAME)
    except Exception:  # noqa: BLE001  unreadable: not a render of ours
        return False


def header_rate(path: Path) -> int | None:
    """The sample rate a file declares, or None when libsndfile cannot tell (the decoder reports it later)."""
    info = header_length(path)
    return None if info is None else info[1]


def header_length(path: Path) -> tuple[int, int, int] | None:
    """(frames, sample rate, channels) as a file declares them, or None when libsndfile cannot tell."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return int(info.frames), int(info.samplerate), int(info.channels)
    except Exception:  # noqa: BLE001  the decoder reports unreadable files properly later
        return None
