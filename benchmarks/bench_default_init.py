#!/usr/bin/env python
"""The shipped image initialisation against fitting from scratch, on photos it never saw.

    PYTHONPATH=. python benchmarks/bench_default_init.py --size 256 --random-steps 500

For each held-out photo of ``build_default_init.py``'s split (resized so its longer
side is ``--size``, at its own aspect ratio, as ``nfit fit`` would fit it):

* PSNR after 0..16 steps of re-scaled SGD from the shipped init (what `nfit fit` does);
* PSNR after each of ``--random-steps`` Adam steps (lr 1e-3) from a random init
  (what `nfit fit --init random` does);
* the first Adam step at which the random start reaches the 16-step PSNR of the
  shipped init, as a ratio of steps.

Prints a markdown table and writes JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from build_default_init import split_photos  # noqa: E402

from nfit.config import AdaptConfig, FitConfig  # noqa: E402
from nfit.fields import build_field  # noqa: E402
from nfit.fit import fit_adam, fit_sgd, random_init  # noqa: E402
from nfit.inits import default_init  # noqa: E402
from nfit.signals import read_signal  # noqa: E402


def resized(path: Path, size: int) -> torch.Tensor:
    """[H, W, C] with the longer side ``size`` (antialiased bicubic)."""
    values = torch.from_numpy(read_signal(path).values)
    h, w, _ = values.shape
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(values.permute(2, 0, 1)[None], size=shape, mode="bicubic", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "dev" / "images"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--random-steps", type=int, default=500)
    p.add_argument("--json")
    args = p.parse_args()
    _, photos = split_photos(Path(args.data))
    rows = []
    for path in photos:
        image = resized(path, args.size)
        shape, channels = tuple(image.shape[:2]), image.shape[2]
        targets = image.reshape(1, -1, channels)
        init = default_init("image", channels)
        ours = fit_sgd(init.field, init.params, targets, shape, AdaptConfig(steps=16))
        ours_psnr = [round(x.item(), 3) for x in ours.psnr]  # steps 0..16
        net = build_field("siren", {"in_dim": 2, "out_dim": channels})
        scratch = fit_adam(net, random_init(net, 0), targets, shape, FitConfig(steps=args.random_steps))
        scratch_psnr = [round(x.item(), 3) for x in scratch.psnr]  # steps 0..N
        reach = next((k for k, v in enumerate(scratch_psnr) if v >= ours_psnr[16]), None)
        row = {"photo": path.name, "shape": list(shape), "default_k16": ours_psnr[16], "default_curve": ours_psnr,
               "random_adam100": scratch_psnr[min(100, args.random_steps)], "random_curve": scratch_psnr,
               "random_steps_to_match": reach, "step_ratio": None if reach is None else round(reach / 16, 2)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("curve")}), flush=True)
    print("\n| photo | size | default init, 16 SGD steps | random init, 100 Adam steps | Adam steps from random to match | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        reach = f">{args.random_steps}" if r["random_steps_to_match"] is None else str(r["random_steps_to_match"])
        ratio = f">{args.random_steps / 16:.0f}x" if r["step_ratio"] is None else f"{r['step_ratio']}x"
        print(f"| {r['photo']} | {r['shape'][1]}x{r['shape'][0]} | {r['default_k16']:.2f} dB | {r['random_adam100']:.2f} dB | "
              f"{reach} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
