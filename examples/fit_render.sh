#!/usr/bin/env bash
# The command line, end to end: fit the bundled photo from nfit's shipped
# initialisation (16 steps), look at the file, render it at 4x.
#
#     bash examples/fit_render.sh [OUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-fit_render_out}
mkdir -p "$out"
nfit fit "$here/data/chelsea_128.png" -o "$out/chelsea.nf" --init default --save-context-maps "$out/context"
nfit info "$out/chelsea.nf"
nfit render "$out/chelsea.nf" --res 512 -o "$out/chelsea_512.png"
