"""nfit.flops against torch's own FLOP counter (FlopCounterMode), exactly: both count matmuls only."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nfit import flops
from nfit.fields import build_field
from nfit.meta import build_strategy
from nfit.meta.inner import expand_params
from nfit.signals import grid_coords

CFG = {"in_dim": 2, "out_dim": 3, "width": 8, "depth": 3}
RES, BATCH = 6, 2
DIMS = flops.siren_dims(**CFG)


def _setup():
    field = build_field("siren", CFG)
    theta = {k: v.requires_grad_(True) for k, v in field.init_params(torch.Generator().manual_seed(0)).items()}
    coords = grid_coords((RES, RES))
    targets = torch.rand(BATCH, RES * RES, 3, generator=torch.Generator().manual_seed(1))
    return field, theta, coords, targets


def _count(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_siren_forward_matches_torch():
    field, theta, coords, _ = _setup()
    params = expand_params({k: v.detach() for k, v in theta.items()}, BATCH)
    assert _count(lambda: field(params, coords)) == flops.forward_flops(DIMS, RES * RES, BATCH)
    assert flops.forward_flops(flops.siren_dims(), 1) == 2 * (2 * 256 + 3 * 256 * 256 + 256 * 3)


def test_siren_forward_backward_matches_torch():
    field, theta, coords, targets = _setup()
    params = expand_params(theta, BATCH)
    got = _count(lambda: (field(params, coords) - targets).pow(2).mean().backward())
    assert got == flops.fit_step_flops(DIMS, RES * RES, BATCH)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_maml_step_matches_torch(k, first_order):
    field, theta, coords, targets = _setup()
    strategy = build_strategy("maml", {"inner_steps": k, "first_order": first_order})
    got = _count(lambda: strategy.outer_loss(field, theta, coords, targets).loss.backward())
    assert got == flops.maml_step_flops(DIMS, RES * RES, BATCH, k, first_order)
    assert got == flops.meta_step_flops("maml", DIMS, RES * RES, BATCH, strategy.config)


@pytest.mark.parametrize("options", [
    {"inner_steps": 2, "gamma": 0.25, "boot_steps": 2},
    {"inner_steps": 3, "gamma": 0.5, "boot_steps": 0},
    {"inner_steps": 1, "gamma": 0.3, "boot_steps": 1, "first_order": True},
    {"inner_steps": 2, "gamma": 0.25, "boot_steps": 3, "chunk": 16},  # chunking changes no FLOP
])
def test_gradncp_step_matches_torch(options):
    field, theta, coords, targets = _setup()
    strategy = build_strategy("gradncp", options)
    got = _count(lambda: strategy.outer_loss(field, theta, coords, targets).loss.backward())
    assert got == flops.meta_step_flops("gradncp", DIMS, RES * RES, BATCH, strategy.config)


def test_second_order_costs_nine_forwards_per_hidden_layer():
    # a layer whose input depends on theta: forward 1 + backward 2 + double backward 6
    dims = [4, 4]
    c = flops.forward_flops(dims, 10, 1)
    assert flops.inner_step_flops([1, 4, 4], 10, 1) - flops.inner_step_flops([1, 4], 10, 1) == 9 * c
    assert flops.inner_step_flops([1, 4], 10, 1) == 4 * flops.forward_flops([1, 4], 10, 1)
