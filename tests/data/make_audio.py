"""Make the audio test files in tests/data/audio/ (see tests/data/README.md). Not run by the tests.

    python tests/data/make_audio.py [DATASETS]      # DATASETS: the shared datasets folder

Deterministic: the same sources give the same audio. The bytes of the .ogg differ
between runs only in the Ogg stream serial number, which libsndfile draws at random.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import av
import numpy as np
import soundfile as sf

DATASETS = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/datasets")
OUT = Path(__file__).parent / "audio"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    digit = DATASETS / "ci/audio/digit_1.wav"  # "one", 8 kHz mono 16-bit, 0.91 s
    shutil.copyfile(digit, OUT / "digit1_8k.wav")
    pcm, rate = sf.read(digit, dtype="int16")

    # libsndfile's encoders: libvorbis (default quality) and LAME (default bitrate).
    sf.write(OUT / "digit1_8k.ogg", pcm, rate, format="OGG", subtype="VORBIS")
    sf.write(OUT / "digit1_8k.mp3", pcm, rate, format="MP3", subtype="MPEG_LAYER_III")

    # AAC in MP4, which libsndfile cannot read: FFmpeg's own encoder, bit-exact mode (no version strings).
    with av.open(str(OUT / "digit1_8k.m4a"), "w", format="ipod", options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        stream.bit_rate = 24_000
        stream.codec_context.options = {"flags": "+bitexact"}
        frame = av.AudioFrame.from_ndarray(pcm[None].astype(np.float32) / 32768, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)

    # Stereo 24-bit FLAC: the first 0.25 s of a cymbal swoosh, samples unchanged.
    swash = DATASETS / "dev/audio_music/perc_swash.flac"  # 44.1 kHz stereo PCM_24, 0.32 s
    with sf.SoundFile(swash) as f:
        part = f.read(frames=f.samplerate // 4, dtype="int32")
        sf.write(OUT / "swash_stereo_24bit.flac", part, f.samplerate, format="FLAC", subtype="PCM_24")

    for path in sorted(OUT.iterdir()):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
