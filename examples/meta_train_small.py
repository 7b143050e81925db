"""Meta-learn an initialisation on a small folder, then fit an unseen image from it.

    python examples/meta_train_small.py            # 200 outer steps on 32x32 crops (some minutes on 2 CPU cores)
    python examples/meta_train_small.py --quick    # a few steps, to check that everything runs

The folder: random 32x32 crops of the bundled photo (its left three quarters); the
unseen image: a crop of its right quarter.
"""

import argparse
import random
from pathlib import Path

import imageio.v3 as iio
import numpy as np

import nfit

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only")
    parser.add_argument("--out", type=Path, default=Path("meta_train_out"), help="output folder")
    args = parser.parse_args()
    photo = iio.imread(HERE / "data" / "chelsea_128.png")[..., :3]  # [128, 128, 3]
    folder = args.out / "crops"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(48):
        y, x = rng.randint(0, 96), rng.randint(0, 64)
        iio.imwrite(folder / f"crop_{i:02d}.png", np.ascontiguousarray(photo[y : y + 32, x : x + 32]))
    unseen = args.out / "unseen.png"
    iio.imwrite(unseen, np.ascontiguousarray(photo[48:80, 96:128]))

    steps = 2 if args.quick else 200
    field = nfit.FieldOptions(width=32 if args.quick else 256)
    result = nfit.meta_train(
        folder, args.out / "run",
        train=nfit.TrainConfig(algo="gradncp", steps=steps, lr=1e-4, val_every=max(1, steps // 4), device="cpu"),
        data_config=nfit.DataConfig(res=32, workers=0),
        field_options=field,
        on_event=lambda e: print(f"  step {e.step}: validation PSNR {e.values['val_psnr']:.2f} dB") if e.kind == "val" else None,
    )
    learned = nfit.fit(unseen, init=result.init)  # GradNCP's Algorithm 2, 16 steps
    scratch = nfit.fit(unseen, steps=16, width=field.width)  # Adam from a random initialisation, 16 steps
    print(f"unseen crop after 16 steps: {learned.summary['psnr']:.2f} dB from {result.init}, "
          f"{scratch.summary['psnr']:.2f} dB from scratch")


if __name__ == "__main__":
    main()
