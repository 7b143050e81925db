#!/usr/bin/env bash
# The command line, end to end: fit the bundled photo as nfit fit does by default (in
# tiles, from nfit's shipped tile initialisation), look at the file, render it at 4x.
#
#     bash examples/fit_render.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-fit_render_out}
mkdir -p "$out"
nfit fit "$here/data/chelsea_128.png" -o "$out/chelsea.nf"
nfit info "$out/chelsea.nf"
nfit render "$out/chelsea.nf" --res 512 -o "$out/chelsea_512.png"
