"""Meta-SparseINR: pruning, the masked field, sparse runs and their levels, sparse .nf files."""

import dataclasses
import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nfit import api
from nfit.cli import app
from nfit.config import DataConfig, FieldOptions, TrainConfig
from nfit.errors import ConfigError, FieldFileError
from nfit.fieldfile import load_field, save_field
from nfit.fields import build_field, count_params
from nfit.fields.masked import Masked, density, full_mask, mask_size, narrow_width, pack_mask, prunable, unpack_mask
from nfit.fit import random_init
from nfit.meta.sparse import level_alive, prune
from nfit.runs import LEVELS_DIR, load_init
from nfit.train import meta_train

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
RES = 12
ROUNDS, SPR = 3, 2


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """12 real 16x16 RGB crops of a committed photo."""
    folder = tmp_path_factory.mktemp("faces")
    photo = iio.imread(ROOT / "tests" / "data" / "chelsea_48x32.png")[..., :3]
    for i in range(12):
        y, x = (i // 4) * 6, (i % 4) * 10
        iio.imwrite(folder / f"crop_{i:02d}.png", np.ascontiguousarray(photo[y : y + 16, x : x + 16]))
    return folder


def _train_cfg(algo, steps=2):
    return TrainConfig(algo=algo, steps=steps, batch_size=4, log_every=1, val_every=2, ckpt_every=1, test_steps=2,
                       device="cpu", lr=1e-3)


def _data_cfg():
    return DataConfig(res=RES, workers=0, val_fraction=0.25, val_limit=3)


@pytest.fixture(scope="module")
def dense(faces, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dense"
    meta_train(faces, run, _train_cfg("maml"), _data_cfg(), FieldOptions(width=16, depth=3), {"inner_steps": 2})
    return run


def sparse_run(faces, dense, run, **options):
    opts = {"rounds": ROUNDS, "steps_per_round": SPR, **options}
    return meta_train(faces, run, _train_cfg("sparse"), _data_cfg(), None, opts, init_from=dense)


@pytest.fixture(scope="module")
def sparse(faces, dense, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "sparse"
    sparse_run(faces, dense, run)
    return run


def levels(run):
    return [load_init(run / LEVELS_DIR / f"level-{k:02d}.safetensors") for k in range(ROUNDS + 1)]


# -- pruning ----------------------------------------------------------------------


def test_prune_is_global_magnitude_over_survivors():
    g = torch.Generator().manual_seed(0)
    theta = {"a.weight": torch.randn(5, 7, generator=g), "a.bias": torch.randn(5), "b.weight": torch.randn(3, 4, generator=g) * 3}
    mask = full_mask(theta)
    assert set(mask) == {"a.weight", "b.weight"}  # biases are never pruned
    mask["a.weight"][0, 0] = False  # already pruned: must stay pruned whatever its magnitude
    theta["a.weight"][0, 0] = 100.0
    keep = 20
    new = prune(mask, {k: theta[k].abs() for k in mask}, keep)
    # reference: sort the magnitudes of the surviving weights, keep the largest `keep`
    alive = torch.cat([theta[k].abs()[mask[k]] for k in mask])
    threshold = alive.sort(descending=True).values[keep - 1]
    for k in mask:
        expected = mask[k] & (theta[k].abs() >= threshold)
        assert torch.equal(new[k], expected), k
    assert mask_size(new)[0] == keep and not new["a.weight"][0, 0]


def test_level_alive_follows_the_schedule_to_within_one_weight():
    total = 197_888  # the weights of GradNCP's image SIREN
    mask = {"w.weight": torch.ones(total, dtype=torch.bool)}
    g = torch.Generator().manual_seed(1)
    scores = {"w.weight": torch.rand(total, generator=g)}
    for k in range(1, 21):
        mask = prune(mask, scores, level_alive(total, 0.2, k))
        assert abs(mask_size(mask)[0] - total * 0.8**k) <= 1, k


def test_masked_field_has_zero_gradient_on_pruned_weights():
    field = build_field("siren", {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3})
    theta = random_init(field, 0)
    mask = prune(full_mask(theta), {k: theta[k].abs() for k in prunable(theta)}, 60)
    masked = Masked(field, mask)
    params = {k: v.unsqueeze(0).clone().requires_grad_(True) for k, v in theta.items()}
    coords = torch.rand(10, 2) * 2 - 1
    masked(params, coords).pow(2).sum().backward()
    for k, m in mask.items():
        assert (params[k].grad[0][~m] == 0).all() and params[k].grad[0][m].abs().sum() > 0
    # the masked field equals the base field on masked weights
    zeroed = {k: (v * mask[k] if k in mask else v).unsqueeze(0) for k, v in theta.items()}
    torch.testing.assert_close(masked({k: v.unsqueeze(0) for k, v in theta.items()}, coords), field(zeroed, coords))


def test_gradient_checkpointing_passes_to_the_inner_strategy_on_a_masked_field():
    from nfit.meta import build_strategy

    field = build_field("siren", {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3})
    theta = random_init(field, 0)
    masked = Masked(field, prune(full_mask(theta), {k: theta[k].abs() for k in prunable(theta)}, 60))
    coords = torch.rand(20, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    targets = torch.rand(2, 20, 3, generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpoint in (False, True):
        strategy = build_strategy("sparse", {"inner_steps": 2, "gradient_checkpointing": checkpoint})
        assert strategy.inner.config.gradient_checkpointing is checkpoint
        th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        strategy.outer_loss(masked, th, coords, targets).loss.backward()
        grads.append({k: v.grad for k, v in th.items()})
    for k in theta:
        torch.testing.assert_close(grads[1][k], grads[0][k], msg=k)


def test_pack_unpack_mask_round_trip():
    shapes = {"a.weight": (3, 5), "b.weight": (7,)}
    g = torch.Generator().manual_seed(2)
    mask = {k: torch.rand(s, generator=g) > 0.5 for k, s in shapes.items()}
    packed = pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(22 / 8)
    back = unpack_mask(packed, shapes)
    assert all(torch.equal(back[k], mask[k]) for k in shapes)
    with pytest.raises(ValueError):
        unpack_mask(packed[:-1], shapes)


def test_narrow_width_matches_a_brute_force_search():
    field = build_field("siren", {"in_dim": 2, "out_dim": 3})
    for values in (3_000, 21_000, 80_000, 159_000):
        def count(w):
            return count_params(build_field("siren", {"in_dim": 2, "out_dim": 3, "width": w}))
        best = min(range(1, 257), key=lambda w: (abs(count(w) - values), w))
        assert abs(count(narrow_width(field, values)) - values) == abs(count(best) - values)
    # the paper's level 10 (10.7% of the weights) is about width 84
    assert 80 <= narrow_width(field, round(0.8**10 * 197_888) + 1027) <= 90


# -- sparse meta-training -----------------------------------------------------------


def test_sparse_run_levels_are_nested_with_the_scheduled_density(sparse):
    inits = levels(sparse)
    total = inits[0].sparsity["weights"]
    for k, init in enumerate(inits):
        assert init.sparsity["level"] == k
        assert abs(mask_size(init.mask)[0] - total * 0.8**k) <= 1
        assert density(init.mask) == pytest.approx(init.sparsity["density"], abs=1e-6)
        for name, m in init.mask.items():
            assert (init.params[name][~m] == 0).all()  # pruned weights are exactly zero
            if k:
                assert not (m & ~inits[k - 1].mask[name]).any()  # nested: nothing revived
    # the run's result is its last level
    assert torch.equal(load_init(sparse).params["l1.weight"], inits[-1].params["l1.weight"])
    # the level nearest a requested density
    assert load_init(sparse, density=0.6).sparsity["level"] == 2
    assert load_init(sparse, density=1.0).sparsity["level"] == 0


def test_sparse_training_moves_only_the_surviving_weights(sparse, dense):
    start = load_init(dense).params
    inits = levels(sparse)
    assert all(torch.equal(inits[0].params[k], start[k]) for k in start)  # level 0: the dense run, untouched
    last = inits[-1]
    moved = (last.params["l1.weight"] != start["l1.weight"]) & last.mask["l1.weight"]
    assert moved.any()  # meta-training went on with the mask


def test_sparse_resume_is_exact(faces, dense, sparse, tmp_path):
    run = tmp_path / "cut"
    cfg = _train_cfg("sparse")

    def stop(event):  # Ctrl-C in round 2, mid-round
        if event.kind == "step" and event.step == SPR + 1:
            raise KeyboardInterrupt

    cut = meta_train(faces, run, cfg, _data_cfg(), None, {"rounds": ROUNDS, "steps_per_round": SPR}, init_from=dense,
                     on_event=stop)
    assert cut.interrupted and cut.step == SPR + 1
    meta_train(None, run, resume=True)
    for a, b in zip(levels(run), levels(sparse)):
        assert all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)
        assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_random_pruning_and_gradncp_inner(faces, dense, tmp_path):
    sparse_run(faces, dense, tmp_path / "rnd", prune="random", inner="gradncp", gamma=0.5, inner_steps=2)
    init = load_init(tmp_path / "rnd")
    assert init.algo["config"]["prune"] == "random" and init.algo["config"]["inner_config"]["gamma"] == 0.5
    assert abs(mask_size(init.mask)[0] - init.sparsity["weights"] * 0.8**ROUNDS) <= 1


def test_sparse_option_errors(faces, dense, sparse, tmp_path):
    with pytest.raises(ConfigError, match="--from"):
        meta_train(faces, tmp_path / "a", _train_cfg("sparse"), _data_cfg(), None, {})
    with pytest.raises(ConfigError, match="already sparse"):
        sparse_run(faces, sparse, tmp_path / "b")
    with pytest.raises(ConfigError, match="--rounds does not apply"):
        meta_train(faces, tmp_path / "c", _train_cfg("maml"), _data_cfg(), None, {"rounds": 3})
    with pytest.raises(ConfigError, match="--prune-fraction"):
        sparse_run(faces, dense, tmp_path / "d", prune_fraction=1.5)
    with pytest.raises(ConfigError, match="not a sparse run"):
        load_init(dense, density=0.5)
    with pytest.raises(ConfigError, match="cannot be extended"):
        meta_train(None, sparse, TrainConfig(steps=99), resume=True)


# -- fitting and files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_crop(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "crop.png"
    photo = iio.imread(ROOT / "tests" / "data" / "chelsea_48x32.png")[..., :3]
    iio.imwrite(path, np.ascontiguousarray(photo[8:24, 8:24]))
    return path


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fitting_keeps_pruned_weights_zero(sparse, photo_crop, optimizer):
    init = load_init(sparse, density=0.5)
    nf = api.fit(photo_crop, init=init, optimizer=optimizer, steps=3)
    assert nf.mask is init.mask
    for k, m in init.mask.items():
        assert (nf.params[k][~m] == 0).all()
        assert (nf.params[k][m] != init.params[k][m]).any()  # the survivors were fitted


def test_sparse_file_round_trip_and_size(sparse, photo_crop, tmp_path):
    files = {}
    for level in (1, 3):
        init = load_init(sparse / LEVELS_DIR / f"level-{level:02d}.safetensors")
        nf = api.fit(photo_crop, init=init, steps=2, bits=0)  # floats: their bytes are counted below
        path = save_field(nf, tmp_path / f"l{level}.nf")
        back = load_field(path, init)
        assert all(torch.equal(back.params[k], nf.params[k]) for k in nf.params)  # bit-exact
        assert back.n_values == nf.n_values == count_params(init.field) - init.sparsity["weights"] + init.sparsity["alive"]
        files[level] = (path, nf)
        # tensor bytes: exactly 4 per stored value; the rest is the (constant-size) header
        header = int.from_bytes(path.read_bytes()[:8], "little")
        assert path.stat().st_size - 8 - header == 4 * nf.n_values
        # float16 halves the values, standalone adds the packed mask
        half = save_field(dataclasses.replace(nf, dtype="float16"), tmp_path / f"h{level}.nf")
        header = int.from_bytes(half.read_bytes()[:8], "little")
        assert half.stat().st_size - 8 - header == 2 * nf.n_values
        alone = save_field(dataclasses.replace(nf, standalone=True), tmp_path / f"s{level}.nf")
        header = int.from_bytes(alone.read_bytes()[:8], "little")
        assert alone.stat().st_size - 8 - header == 4 * nf.n_values + math.ceil(init.sparsity["weights"] / 8)
        back = load_field(alone)  # no initialisation needed
        assert all(torch.equal(back.params[k], nf.params[k]) for k in nf.params)
    (p1, nf1), (p3, nf3) = files[1], files[3]
    # bytes scale with the surviving weights (the header differs by a few characters at most)
    assert abs((p1.stat().st_size - p3.stat().st_size) - 4 * (nf1.n_values - nf3.n_values)) <= 16


def test_sparse_file_needs_the_right_initialisation(sparse, photo_crop, tmp_path):
    init1 = load_init(sparse / LEVELS_DIR / "level-01.safetensors")
    init2 = load_init(sparse / LEVELS_DIR / "level-02.safetensors")
    path = save_field(api.fit(photo_crop, init=init1, steps=1), tmp_path / "a.nf")
    with pytest.raises(FieldFileError, match=f"give the initialisation.*{init1.sha256}"):
        load_field(path)
    with pytest.raises(FieldFileError, match=f"fitted from the initialisation with sha256 {init1.sha256}, not {init2.sha256}"):
        load_field(path, init2)
    # a run directory is searched by hash
    assert api.load(path, sparse).init["sha256"] == init1.sha256
    described = api.info(path)  # info needs no initialisation
    assert described["density"] == pytest.approx(init1.sparsity["density"], abs=1e-6)
    assert described["values"] == api.load(path, init1).n_values and described["mask"] == "init"


def test_cli_sparse_end_to_end(faces, dense, sparse, photo_crop, tmp_path):
    run = tmp_path / "cli"
    r = runner.invoke(app, ["meta-train", str(faces), "-o", str(run), "--algo", "sparse", "--from", str(dense),
                            "--rounds", "2", "--steps-per-round", "1", "--batch-size", "4", "--val-limit", "2",
                            "--workers", "0", "--device", "cpu", "--test-steps", "1"])
    assert r.exit_code == 0, r.output
    assert "round 2/2" in r.output and (run / LEVELS_DIR / "level-02.safetensors").is_file()
    out = tmp_path / "a.nf"
    r = runner.invoke(app, ["fit", str(photo_crop), "--init", str(sparse), "--density", "0.6", "-o", str(out),
                            "--steps", "1", "--dtype", "float16"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["render", str(out), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 2 and "--init" in r.output and not (tmp_path / "a.png").exists()
    r = runner.invoke(app, ["render", str(out), "--init", str(sparse), "-o", str(tmp_path / "a.png")])
    assert r.exit_code == 0 and (tmp_path / "a.png").is_file()
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "float16" in r.output and "stored values" in r.output
    described = json.loads(runner.invoke(app, ["info", str(out), "--json"]).stdout)
    assert described["dtype"] == "float16" and described["density"] == pytest.approx(0.64, abs=0.01)
    r = runner.invoke(app, ["info", str(sparse / LEVELS_DIR / "level-03.safetensors")])
    assert r.exit_code == 0 and "dense-narrow equivalent: width" in r.output
    r = runner.invoke(app, ["meta-train", str(faces), "-o", str(tmp_path / "x"), "--algo", "sparse", "--from", str(dense),
                            "--width", "8"])
    assert r.exit_code == 2 and "--width" in r.output
    r = runner.invoke(app, ["fit", str(photo_crop), "--standalone", "-o", str(tmp_path / "b.nf"), "--steps", "1"])
    assert r.exit_code == 2 and "--standalone" in r.output and not (tmp_path / "b.nf").exists()


def test_cli_eval_compares_initialisations(faces, dense, sparse):
    r = runner.invoke(app, ["eval", str(sparse), str(dense), "random", str(faces), "--optimizer", "adam", "--steps", "2",
                            "--density", "0.5", "--limit", "2", "--res", str(RES), "--width", "16", "--depth", "3",
                            "--json"])
    assert r.exit_code == 0, r.output
    reports = json.loads(r.stdout)
    assert [rep["init"] for rep in reports] == [str(sparse), str(dense), "random"]
    assert reports[0]["density"] == pytest.approx(0.512, abs=0.01) and reports[1]["density"] == 1.0
    assert reports[0]["values"] < reports[1]["values"] == reports[1]["parameters"]
    assert all(len(rep["results"]["adam"]["psnr_mean"]) == 3 for rep in reports)
