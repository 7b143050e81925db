#!/usr/bin/env bash
# Sound and moving pictures through the same commands as photos: fit the bundled
# spoken digit and video clip, look at the files, render them back at other rates
# and sizes (the fields are continuous in time and space).
#
#     bash examples/fit_render_audio_video.sh [OUT_DIR] [STEPS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-fit_render_av_out}
steps=${2:-500}
mkdir -p "$out"

# audio: 8 kHz speech; render at 16 kHz (twice the samples, same second) and as FLAC
nfit fit "$here/data/digit_one_8k.wav" -o "$out/digit.nf" --steps "$steps"
nfit info "$out/digit.nf"
nfit render "$out/digit.nf" --sample-rate 16000 -o "$out/digit_16k.wav"
nfit render "$out/digit.nf" -o "$out/digit.flac"

# video: 8 frames of 88x72; render at twice the size and twice the frame rate, as MP4 and PNG frames
nfit fit "$here/data/carphone_88x72.mp4" -o "$out/carphone.nf" --steps "$steps"
nfit info "$out/carphone.nf"
nfit render "$out/carphone.nf" --res 176 --fps 60 -o "$out/carphone_176_60fps.mp4"
nfit render "$out/carphone.nf" -o "$out/carphone_frames/"
