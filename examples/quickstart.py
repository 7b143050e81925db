"""Fit the bundled photo and render it at 4x: the main job of nfit, end to end.

    python examples/quickstart.py            # nfit fit's defaults: tiles, to 38 dB (seconds on a CPU)
    python examples/quickstart.py --quick    # a few steps, to check that everything runs
"""

import argparse
from pathlib import Path

import nfit
from nfit.render import render_to_file

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--out", type=Path, default=Path("quickstart_out"), help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    photo = HERE / "data" / "chelsea_128.png"
    steps = 10 if args.quick else None  # None: nfit fit's default stopping rule

    def progress(label, total):
        def on_step(info):
            if info.step % 20 == 0 or info.step == total:
                print(f"  {label}: step {info.step}/{total}  PSNR {info.psnr:.2f} dB")

        return on_step

    nf = nfit.fit(photo, steps=steps, progress=progress)
    path = nf.save(args.out / "chelsea.nf")
    print(f"fitted {photo.name} in {nf.tiles} tiles: {nf.summary['psnr']:.2f} dB PSNR, SSIM {nf.summary['ssim']:.4f}, "
          f"{nf.summary['steps']} steps (stopped by {nf.summary['stopped']}), {nf.summary['seconds']:.1f} s "
          f"-> {path}, {path.stat().st_size:,} bytes coded at {nf.summary['bits']} bits "
          f"(the PNG: {photo.stat().st_size:,})")

    big, shape = render_to_file(nfit.load(args.out / "chelsea.nf"), args.out / "chelsea_512.png", res=512)
    print(f"rendered {big} at {shape[1]}x{shape[0]}")


if __name__ == "__main__":
    main()
