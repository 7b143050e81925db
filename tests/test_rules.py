"""Every rule about combining options lives in the library: the Python API refuses exactly what the
command line refuses, with the same message (the CLI prints it as its one-line error, exit code 2)."""

import shutil
from pathlib import Path

import pytest
from conftest import make_crops
from typer.testing import CliRunner

import nfit
from nfit import api
from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, RenderConfig, TrainConfig
from nfit.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data"
runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A photo, a folder of crops, a tiny run trained on them, a fitted .nf and a clip."""
    root = tmp_path_factory.mktemp("rules")
    photo = root / "photo.png"
    shutil.copy(DATA / "chelsea_48x32.png", photo)
    crops = make_crops(root / "crops")
    run = root / "run"
    nfit.meta_train(crops, run, train=TrainConfig(steps=1, batch_size=4, device="cpu"),
                    data_config=DataConfig(res=8, workers=0, val_fraction=0.25),
                    field_options=FieldOptions(width=8, depth=2), algo_options={"inner_steps": 1})
    nfit.fit(photo, steps=1, width=8, depth=2).save(root / "photo.nf")
    clip = next((DATA / "audio").glob("*.wav"))
    return {"photo": photo, "crops": crops, "run": run, "nf": root / "photo.nf", "root": root, "clip": clip}


def rules(w):
    """(name, the API call, the same request on the command line)."""
    p, crops, run, nf, root = w["photo"], w["crops"], w["run"], w["nf"], w["root"]
    return [
        ("-o and -O", lambda: api.fit_paths([p], output=root / "a.nf", out_dir=root / "o"),
         ["fit", p, "-o", root / "a.nf", "-O", root / "o"]),
        ("-o for many", lambda: api.fit_paths([p, p], output=root / "a.nf"), ["fit", p, p, "-o", root / "a.nf"]),
        ("init decides the field (fit)", lambda: api.fit(p, init=run, width=16), ["fit", p, "--init", run, "--width", 16]),
        ("init decides the field (fit_paths)", lambda: api.fit_paths([p], init=run, field=FieldOptions(depth=3)),
         ["fit", p, "--init", run, "--depth", 3]),
        ("test-time options need an init", lambda: api.fit_paths([p], init="random", rescale=False),
         ["fit", p, "--init", "random", "--no-rescale"]),
        ("density needs a sparse run", lambda: api.fit_paths([p], density=0.5), ["fit", p, "--density", 0.5]),
        ("context maps need an init", lambda: api.fit_paths([p], context_maps=root / "maps"),
         ["fit", p, "--save-context-maps", root / "maps"]),
        ("no shipped init for audio", lambda: api.fit_paths([w["clip"]], init="default"),
         ["fit", w["clip"], "--init", "default"]),
        ("--res or --width", lambda: RenderConfig(res=64, width=32), ["render", nf, "--res", 64, "--width", 32]),
        ("resume continues its run", lambda: api.meta_train(crops, root / "other", resume=run),
         ["meta-train", crops, "-o", root / "other", "--resume", run]),
        ("a run needs -o", lambda: api.meta_train(crops), ["meta-train", crops]),
        ("sparse takes the grid from the dense run",
         lambda: api.meta_train(crops, root / "sp", train=TrainConfig(algo="sparse"), data_config=DataConfig(res=8)),
         ["meta-train", crops, "-o", root / "sp", "--algo", "sparse", "--res", 8]),
        ("field options are the random baseline's", lambda: api.compare([run], crops, field_options=FieldOptions(width=8)),
         ["eval", run, crops, "--width", 8]),
    ]


@pytest.mark.parametrize("index", range(13))
def test_the_api_refuses_what_the_cli_refuses(world, index):
    name, call, argv = rules(world)[index]
    with pytest.raises(ConfigError) as raised:
        call()
    result = runner.invoke(app, [str(a) for a in argv])
    assert result.exit_code == 2, (name, result.output)
    assert result.output.strip().splitlines()[-1] == f"nfit: error: {raised.value}", name


def test_every_rule_is_listed(world):
    assert len(rules(world)) == 13
