#!/usr/bin/env python
"""The pictures in the README, made with nfit itself.

    PYTHONPATH=. python benchmarks/readme_pictures.py --curves benchmarks/results/default_init.json

* docs/upscale.png: a 64x64 crop, its field rendered at 4x, and a bilinear 4x upscale;
* docs/context.png: GradNCP's selected context at test-time steps 1, 2, 4, 8 and 16
  (`nfit fit --save-context-maps` writes every step);
* docs/psnr_steps.png (with --curves, the JSON of bench_default_init.py): PSNR against
  steps from the shipped initialisation and from a random one;
* docs/meta_psnr_steps.png (with --eval, the JSON of `nfit eval GRADNCP MAML random DATA
  --json`): PSNR against test-time steps from each initialisation.

    PYTHONPATH=. python benchmarks/readme_pictures.py --only-eval --eval eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nfit  # noqa: E402
from nfit.api import save_context_maps  # noqa: E402

PHOTO = ROOT / "examples" / "data" / "chelsea_128.png"
DOCS = ROOT / "docs"


def label_gap(height: int) -> np.ndarray:
    return np.full((height, 4, 3), 255, np.uint8)


def upscale(tmp: Path) -> None:
    crop = iio.imread(PHOTO)[40:104, 40:104, :3]
    src = tmp / "crop.png"
    iio.imwrite(src, crop)
    nf = nfit.fit(src, steps=300)
    big = (nfit.render(nf, res=256).numpy() * 255).round().astype(np.uint8)
    t = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    bilinear = F.interpolate(t, size=(256, 256), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    nearest = np.repeat(np.repeat(crop, 4, axis=0), 4, axis=1)
    row = [nearest, label_gap(256), big, label_gap(256), bilinear.round().clamp(0, 255).byte().numpy()]
    iio.imwrite(DOCS / "upscale.png", np.concatenate(row, axis=1))
    print(f"upscale: field PSNR {nf.summary['psnr']:.2f} dB after {nf.summary['steps']} steps")


def context(tmp: Path) -> None:
    save_context_maps([PHOTO], tmp / "maps")
    frames = [iio.imread(tmp / "maps" / f"{PHOTO.stem}_context_{k:02d}.png") for k in (0, 1, 3, 7, 15)]
    row = [x for f in frames for x in (f, label_gap(f.shape[0]))][:-1]
    iio.imwrite(DOCS / "context.png", np.concatenate(row, axis=1))


def curves(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    ours = np.mean([r["default_curve"] for r in data["rows"]], axis=0)
    scratch = np.mean([r["random_curve"] for r in data["rows"]], axis=0)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    ax.plot(range(len(scratch)), scratch, label="random init, Adam lr 1e-3 (nfit fit --init random)")
    ax.plot(range(len(ours)), ours, "o-", ms=3, label="shipped init, re-scaled SGD (nfit fit)")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("steps")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{len(data['rows'])} held-out photos, longer side {data['size']} px")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "psnr_steps.png")


def eval_curves(path: Path) -> None:
    """PSNR after 0..K test-time steps, re-scaled (solid) and plain SGD (dashed), one colour per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = json.loads(path.read_text())
    reports = reports if isinstance(reports, list) else [reports]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=150)
    for r in reports:
        name = "random" if r["init"] == "random" else Path(r["init"]).name
        line = None
        for variant, style in (("rescaled", "o-"), ("plain", "--")):
            curve = r["results"].get(variant)
            if curve is None:
                continue
            kw = {"color": line.get_color()} if line is not None else {}
            (drawn,) = ax.plot(range(len(curve["psnr_mean"])), curve["psnr_mean"], style, ms=3,
                               label=f"{name}, {'re-scaled' if variant == 'rescaled' else 'plain'} SGD", **kw)
            line = line or drawn
    r = reports[0]
    ax.set_xlabel("test-time steps")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{r['signals']} held-out signals, {'x'.join(map(str, r['shape']))} (nfit eval)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "meta_psnr_steps.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, help="JSON written by bench_default_init.py --json")
    p.add_argument("--eval", type=Path, help="JSON written by nfit eval ... --json")
    p.add_argument("--only-eval", action="store_true", help="draw only the --eval plot")
    args = p.parse_args()
    DOCS.mkdir(exist_ok=True)
    if not args.only_eval:
        with tempfile.TemporaryDirectory() as tmp:
            upscale(Path(tmp))
            context(Path(tmp))
    if args.curves:
        curves(args.curves)
    if args.eval:
        eval_curves(args.eval)


if __name__ == "__main__":
    main()
