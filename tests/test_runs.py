"""A run directory people can follow: `nfit info RUN` summarises it (steps, speed, validation, last
checkpoint) and RUN/psnr.png plots validation PSNR against outer steps."""

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import pytest
from conftest import make_crops
from typer.testing import CliRunner

import nfit
from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.runs import logged, summarize_run

DATA = Path(__file__).resolve().parent / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    crops = make_crops(root / "crops")
    nfit.meta_train(crops, root / "run", train=TrainConfig(steps=4, batch_size=4, val_every=2, ckpt_every=2,
                                                            test_steps=2, device="cpu"),
                    data_config=DataConfig(res=8, workers=0, val_fraction=0.25),
                    field_options=FieldOptions(width=8, depth=2), algo_options={"inner_steps": 1})
    return root / "run"


def test_summary_of_a_run(run):
    s = summarize_run(run)
    vals = logged(run, "val")
    assert [r["step"] for r in vals] == [0, 2, 4]
    assert s["steps"] == s["target_steps"] == 4 and s["algo"] == "gradncp"
    assert s["best_val"]["psnr"] == max(r["val_psnr"] for r in vals) and s["last_val"]["step"] == 4
    assert s["seconds_per_step"] > 0 and s["last_checkpoint"]["step"] == 4


def test_info_on_a_run_directory_shows_its_progress(run):
    data = json.loads(runner.invoke(app, ["info", str(run), "--json"]).stdout)
    assert data["kind"] == "init" and data["run"]["steps"] == 4  # the result, and how the run got there
    text = " ".join(runner.invoke(app, ["info", str(run)]).stdout.split())  # the table wraps its cells
    assert "step 4 of 4" in text and "best validation" in text and "last checkpoint: step 4" in text


def test_validation_psnr_is_plotted(run):
    pytest.importorskip("matplotlib")
    picture = iio.imread(run / "psnr.png")
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[1] > 300
    assert picture[..., :3].std() > 10  # lines and text, not a blank canvas


def test_a_file_is_not_a_run(run, tmp_path):
    shutil.copy(run / "init.safetensors", tmp_path / "init.safetensors")
    data = json.loads(runner.invoke(app, ["info", str(tmp_path / "init.safetensors"), "--json"]).stdout)
    assert "run" not in data


def test_resume_reads_the_file_index_instead_of_listing_again(tmp_path, monkeypatch):
    crops = make_crops(tmp_path / "crops")
    cfg = dict(train=TrainConfig(steps=2, batch_size=4, ckpt_every=1, test_steps=1, device="cpu"),
               data_config=DataConfig(res=8, workers=0, val_fraction=0.25),
               field_options=FieldOptions(width=8, depth=2), algo_options={"inner_steps": 1})
    nfit.meta_train(crops, tmp_path / "run", **cfg)
    index = json.loads((tmp_path / "run" / "files.json").read_text())["index"]
    assert sorted(index["files"]) == sorted(p.name for p in crops.iterdir()) and index["modality"] == "image"

    def no_listing(*args, **kwargs):
        raise AssertionError("the data folder was listed again")

    monkeypatch.setattr(nfit.train, "scan_media", no_listing)
    assert nfit.meta_train(None, tmp_path / "run", resume=True, steps=3).step == 3
    (tmp_path / "run" / "files.json").write_text('{"sha256": "0", "index": {}}')  # damaged: listed again
    with pytest.raises(AssertionError, match="listed again"):
        nfit.meta_train(None, tmp_path / "run", resume=True, steps=4)
