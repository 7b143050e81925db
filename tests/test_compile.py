"""--compile: the compiled functional outer step agrees with the eager strategies (loss and theta gradients).

Inductor's CPU code generation takes tens of seconds per graph on a small machine, so
both strategies are checked through Dynamo + AOTAutograd with the ``aot_eager`` backend
(the capture of the nested torch.func transforms, which is what can go wrong), and
inductor itself compiles one tiny MAML step only with NFIT_TEST_INDUCTOR=1 (about a minute
of C++ compilation here; the GPU session runs it). Skipped with a reason where torch.compile
or a C++ compiler is unavailable.
"""

import os
import shutil

import pytest
import torch

from nfit.fields import build_field
from nfit.meta import build_strategy
from nfit.meta.compiled import functional_outer_loss, outer_step
from nfit.signals import grid_coords

CFG = {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3}


def _setup(res=6, batch=2):
    field = build_field("siren", CFG)
    theta = field.init_params(torch.Generator().manual_seed(0))
    coords = grid_coords((res, res))
    targets = torch.rand(batch, res * res, 3, generator=torch.Generator().manual_seed(1))
    return field, theta, coords, targets


def _eager(strategy, field, theta, coords, targets):
    th = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
    out = strategy.outer_loss(field, th, coords, targets)
    return out.loss.detach(), out.mse, torch.autograd.grad(out.loss, list(th.values()))


def _check(step, strategy, field, theta, coords, targets):
    loss, mse, grads = _eager(strategy, field, theta, coords, targets)
    g, (loss_c, mse_c) = step(theta, coords, targets)
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(mse_c, mse, rtol=1e-4, atol=1e-7)
    for (name, got), want in zip(g.items(), grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)
    assert any(x.abs().max() > 0 for x in grads)


STRATEGIES = [
    ("maml", {"inner_steps": 2}),
    ("maml", {"inner_steps": 2, "first_order": True}),
    ("gradncp", {"inner_steps": 2, "gamma": 0.25, "boot_steps": 2, "chunk": 16}),
    ("gradncp", {"inner_steps": 2, "gamma": 0.5, "boot_steps": 0}),
]


@pytest.mark.parametrize("algo,options", STRATEGIES)
def test_functional_matches_eager(algo, options):  # torch.func, no compile: the restatement itself
    field, theta, coords, targets = _setup()
    strategy = build_strategy(algo, options)
    _check(outer_step(strategy, field, compile=False), strategy, field, theta, coords, targets)


def _needs_dynamo():
    try:
        import torch._dynamo  # noqa: F401
    except Exception as err:  # pragma: no cover
        pytest.skip(f"torch.compile unavailable: {err}")


@pytest.mark.parametrize("algo,options", STRATEGIES[::2])
def test_compiled_aot_eager_matches_eager(algo, options):
    _needs_dynamo()
    torch._dynamo.reset()
    field, theta, coords, targets = _setup()
    strategy = build_strategy(algo, options)
    _check(outer_step(strategy, field, backend="aot_eager"), strategy, field, theta, coords, targets)


@pytest.mark.skipif(os.environ.get("NFIT_TEST_INDUCTOR") != "1",
                    reason="inductor compiles C++ for ~1 min on CPU: set NFIT_TEST_INDUCTOR=1")
def test_compiled_inductor_matches_eager():
    _needs_dynamo()
    if shutil.which("gcc") is None and shutil.which("cc") is None and shutil.which("clang") is None:
        pytest.skip("no C++ compiler for inductor's CPU backend")
    torch._dynamo.reset()
    field, theta, coords, targets = _setup(res=4, batch=1)
    strategy = build_strategy("maml", {"inner_steps": 1})
    _check(outer_step(strategy, field), strategy, field, theta, coords, targets)


def test_functional_refuses_other_algorithms():
    from nfit.errors import ConfigError

    class Other:
        name, config = "sparse", None

    with pytest.raises(ConfigError):
        functional_outer_loss(Other(), build_field("siren", CFG))


def test_meta_train_compile_matches_eager(tmp_path, monkeypatch):
    """nfit meta-train --compile (aot_eager here) takes the same outer steps as eager, micro-batches included."""
    import imageio.v3 as iio
    import numpy as np

    from nfit.config import DataConfig, FieldOptions, TrainConfig
    from nfit.runs import load_init
    from nfit.train import meta_train

    _needs_dynamo()
    torch._dynamo.reset()
    monkeypatch.setenv("NFIT_COMPILE_BACKEND", "aot_eager")
    photo = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    data = tmp_path / "data"
    data.mkdir()
    for i, img in enumerate(photo):
        iio.imwrite(data / f"{i}.png", img)
    params = {}
    for compiled in (False, True):
        cfg = TrainConfig(algo="maml", steps=2, batch_size=4, micro_batch=2, log_every=1, val_every=2, ckpt_every=2,
                          test_steps=1, device="cpu", compile=compiled, lr=1e-2)
        run = tmp_path / f"run{compiled}"
        meta_train(data, run, cfg, DataConfig(res=8, workers=0, val_fraction=0), FieldOptions(width=8, depth=3),
                   {"inner_steps": 1, "inner_lr": 1.0}, on_event=lambda e: e.kind != "warning" or pytest.fail(str(e.values)))
        params[compiled] = load_init(run).params
    for k in params[False]:
        torch.testing.assert_close(params[True][k], params[False][k], rtol=1e-4, atol=1e-6)
    from nfit.fit import random_init

    init = load_init(tmp_path / "runTrue")
    start = random_init(build_field(init.field_name, init.field_config), 0)
    assert max((params[True][k] - start[k]).abs().max() for k in start) > 1e-3  # the compiled steps did move theta


def test_cli_compile_refused_for_sparse():
    from nfit.errors import ConfigError
    from nfit.train import _compiled_step

    class Sparse:
        name = "sparse"

    with pytest.raises(ConfigError, match="--compile"):
        _compiled_step(Sparse(), build_field("siren", CFG), torch.device("cpu"), 1)
    with pytest.raises(ConfigError, match="one process"):
        _compiled_step(build_strategy("maml", {}), build_field("siren", CFG), torch.device("cpu"), 2)
