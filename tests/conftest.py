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
