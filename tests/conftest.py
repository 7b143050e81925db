from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"

torch.set_num_threads(2)


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def photo() -> Path:
    return DATA / "chelsea_48x32.png"


def make_crops(folder: Path, count: int = 8, size: int = 12) -> Path:
    """``count`` real ``size`` x ``size`` RGB crops of the committed photo in ``folder`` (a tiny data set)."""
    import imageio.v3 as iio
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    pixels = iio.imread(DATA / "chelsea_48x32.png")[..., :3]  # [32, 48, 3]
    for i in range(count):
        y, x = (i // 4) * 8 % (32 - size + 1), (i % 4) * 10 % (48 - size + 1)
        iio.imwrite(folder / f"c{i}.png", np.ascontiguousarray(pixels[y : y + size, x : x + size]))
    return folder
