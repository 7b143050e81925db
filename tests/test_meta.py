"""Meta-learning numerics: GradNCP's scores and context, batched inner loops, MAML and
GradNCP meta-gradients (checked against per-signal loops, hand-written references and
finite differences), the bootstrap target, Algorithm 2's re-scaled SGD, the strategy
registry, and that a few outer steps actually help on real images.

Exactness checks run in float64 (fields take float64 parameters and coordinates);
``fit_sgd`` builds float32 coordinates itself, so its checks run in float32.
"""

import math

import pytest
import torch

import nfit.meta.gradncp as gradncp_module
from nfit.config import AdaptConfig
from nfit.data import load_image
from nfit.errors import ConfigError
from nfit.fields import batch_params, build_field
from nfit.fit import fit_sgd, random_init
from nfit.meta import STRATEGIES, GradNCP, GradNCPConfig, Maml, MamlConfig, build_strategy
from nfit.meta.gradncp import bootstrap_target
from nfit.meta.inner import (
    checkpointed_mse,
    context_scores,
    expand_params,
    full_pass,
    gather_context,
    inner_grads,
    per_signal_mse,
    top_context,
)
from nfit.signals import grid_coords

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, which on a
    busy 2-core machine costs milliseconds per op (1000x the op itself)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------- helpers


def setup(width=16, depth=3, shape=(6, 6), batch=3, channels=3, seed=0, dtype=F64):
    field = build_field("siren", {"in_dim": 2, "out_dim": channels, "width": width, "depth": depth})
    theta = {k: v.to(dtype) for k, v in random_init(field, seed).items()}
    coords = grid_coords(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(1000 + seed)
    targets = torch.rand(batch, coords.shape[0], channels, generator=gen, dtype=torch.float64).to(dtype)
    return field, theta, coords, targets


def leaf(theta):
    """A fresh copy of an unbatched parameter set that collects gradients."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}


def grads_of(theta):
    return {k: v.grad.detach().clone() for k, v in theta.items()}


def last_layer(field):
    last = field.config.depth - 1
    return f"l{last}.weight", f"l{last}.bias"


def f1(field, p, coords, features=False):
    """One signal, unbatched parameters: coords [n, d] -> [n, C] (and features [n, width])."""
    out = field({k: v.unsqueeze(0) for k, v in p.items()}, coords, features=features)
    return (out[0][0], out[1][0]) if features else out[0]


def mse1(field, p, coords, y):
    return (f1(field, p, coords) - y).pow(2).mean()


def hand_scores(field, p, coords, y):
    pred, h = f1(field, p, coords, features=True)
    return (pred - y).norm(dim=-1) * torch.sqrt(h.pow(2).sum(dim=-1) + 1)


def top_by_sort(scores, gamma):
    k = max(1, math.floor(gamma * scores.shape[-1]))
    return scores.argsort(dim=-1, descending=True)[..., :k]


def sgd(p, loss, lr, create_graph):
    g = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
    return {k: v - lr * gi for (k, v), gi in zip(p.items(), g)}


def hand_maml(field, theta, coords, y, steps, lr, create_graph=True):
    p = dict(theta)
    for _ in range(steps):
        p = sgd(p, mse1(field, p, coords, y), lr, create_graph)
    return p


def hand_pruned(field, theta, coords, y, steps, lr, gamma, create_graph=True):
    """GradNCP's inner loop for one signal: re-rank by a full sort, keep the top points, step."""
    p = dict(theta)
    chosen = []
    for _ in range(steps):
        with torch.no_grad():
            idx = top_by_sort(hand_scores(field, p, coords, y), gamma)
        chosen.append(frozenset(idx.tolist()))
        p = sgd(p, mse1(field, p, coords[idx], y[idx]), lr, create_graph)
    return p, chosen


def hand_boot(field, p, coords, y, steps, lr):
    q = {k: v.detach() for k, v in p.items()}
    for _ in range(steps):
        q = {k: v.requires_grad_(True) for k, v in q.items()}
        q = {k: v.detach() for k, v in sgd(q, mse1(field, q, coords, y), lr, False).items()}
    return q


def dist(a, b):
    return torch.sqrt(sum((a[k] - b[k]).pow(2).sum() for k in a))


def flat(g):
    return torch.cat([v.flatten() for v in g.values()])


def assert_params_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------- 1. scores and context


@pytest.mark.parametrize("depth", [2, 3])
def test_context_scores_are_per_point_last_layer_gradient_norms(depth):
    field, theta, coords, targets = setup(width=8, depth=depth, shape=(5, 4), batch=2)
    params = batch_params(theta, 2)
    params["l0.bias"] = params["l0.bias"] + 0.1 * torch.randn(2, 8, dtype=F64)  # the signals differ
    scores = context_scores(field, params, coords, targets)
    assert scores.shape == (2, 20) and not scores.requires_grad
    names = last_layer(field)
    expected = torch.empty(2, 20, dtype=F64)
    for b in range(2):
        p = {k: v[b].detach().clone().requires_grad_(True) for k, v in params.items()}
        for n in range(20):
            loss = 0.5 * (f1(field, p, coords[n : n + 1]) - targets[b, n]).pow(2).sum()
            gw, gb = torch.autograd.grad(loss, [p[k] for k in names])
            expected[b, n] = torch.cat([gw.flatten(), gb]).norm()
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)
    # per-signal coordinates [B, N, d] give the same scores
    scores_b = context_scores(field, params, coords.expand(2, -1, -1), targets)
    torch.testing.assert_close(scores_b, expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("gamma, k", [(0.25, 9), (0.5, 18), (0.1, 3), (1.0, 36), (0.01, 1)])
def test_top_context_keeps_exactly_the_largest_scores(gamma, k):
    scores = torch.rand(4, 36, generator=torch.Generator().manual_seed(3), dtype=F64)
    index = top_context(scores, gamma)
    assert index.shape == (4, k)
    reference = top_by_sort(scores, gamma)
    for b in range(4):
        assert set(index[b].tolist()) == set(reference[b].tolist())
        assert len(set(index[b].tolist())) == k
        if k < 36:  # everything kept beats everything dropped
            dropped = sorted(set(range(36)) - set(index[b].tolist()))
            assert scores[b, index[b]].min() > scores[b, dropped].max()


def test_gather_context_returns_matching_coords_and_targets():
    _, _, coords, targets = setup(shape=(6, 6), batch=3)
    index = top_context(torch.rand(3, 36, generator=torch.Generator().manual_seed(5)), 0.25)
    sub_coords, sub_targets = gather_context(coords, targets, index)
    assert sub_coords.shape == (3, 9, 2) and sub_targets.shape == (3, 9, 3)
    for b in range(3):
        for j, n in enumerate(index[b].tolist()):
            assert torch.equal(sub_coords[b, j], coords[n])
            assert torch.equal(sub_targets[b, j], targets[b, n])


# ---------------------------------------------------------- 2. batched inner gradients


def test_batched_inner_grads_equal_per_signal_loop():
    field, theta, coords, targets = setup(width=16, depth=3, shape=(6, 6), batch=3)
    base = batch_params(theta, 3)
    base["l1.weight"] = base["l1.weight"] + 0.05 * torch.randn(base["l1.weight"].shape, dtype=F64)
    params = {k: v.clone().requires_grad_(True) for k, v in base.items()}

    index = top_context(context_scores(field, params, coords, targets), 0.25)
    sub_coords, sub_targets = gather_context(coords, targets, index)  # [B, k, d]
    for c, y in ((coords, targets), (sub_coords, sub_targets)):
        batched = inner_grads(per_signal_mse(field, params, c, y), params, second_order=False)
        for b in range(3):
            one = {k: v[b : b + 1].detach().clone().requires_grad_(True) for k, v in base.items()}
            cb = c if c.dim() == 2 else c[b : b + 1]
            alone = inner_grads(per_signal_mse(field, one, cb, y[b : b + 1]), one, second_order=False)
            # and by hand, with the mean taken over this signal's points only
            p = {k: v[b].detach().clone().requires_grad_(True) for k, v in base.items()}
            hand = torch.autograd.grad(mse1(field, p, c if c.dim() == 2 else c[b], y[b]), list(p.values()))
            for g, a, h in zip(batched, alone, hand):
                torch.testing.assert_close(g[b], a[0], rtol=1e-10, atol=1e-13)
                torch.testing.assert_close(g[b], h, rtol=1e-10, atol=1e-13)


def test_second_order_inner_grads_keep_their_graph():
    field, theta, coords, targets = setup(width=8, batch=2)
    params = expand_params(leaf(theta), 2)
    g2 = inner_grads(per_signal_mse(field, params, coords, targets), params, second_order=True)
    g1 = inner_grads(per_signal_mse(field, params, coords, targets), params, second_order=False)
    assert all(g.requires_grad for g in g2) and not any(g.requires_grad for g in g1)


# ---------------------------------------------------------- 3. batched adapt and meta-gradient


STRATS = {
    "maml": lambda: Maml(MamlConfig(inner_steps=3, inner_lr=1e-2)),
    "gradncp": lambda: GradNCP(
        GradNCPConfig(inner_steps=3, inner_lr=3e-2, gamma=0.25, boot_steps=2, boot_lr=5e-2, lam=10.0)
    ),
}


@pytest.mark.parametrize("name", sorted(STRATS))
def test_batched_adapt_and_meta_gradient_equal_per_signal(name):
    strategy = STRATS[name]()
    field, theta, coords, targets = setup(width=16, depth=3, shape=(6, 6), batch=3)

    th = leaf(theta)
    adapted = strategy.adapt(field, th, coords, targets)
    result = strategy.outer_loss(field, th, coords, targets)
    result.loss.backward()
    batched_grad = grads_of(th)
    assert result.mse.shape == (3,) and not result.mse.requires_grad

    per_signal_grads, losses = [], []
    for b in range(3):
        tb = leaf(theta)
        alone = strategy.adapt(field, tb, coords, targets[b : b + 1])
        for k in adapted:
            torch.testing.assert_close(adapted[k][b], alone[k][0], rtol=1e-9, atol=1e-12)
        r = strategy.outer_loss(field, tb, coords, targets[b : b + 1])
        r.loss.backward()
        losses.append(r.loss.detach())
        per_signal_grads.append(grads_of(tb))
        torch.testing.assert_close(result.mse[b], r.mse[0], rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(result.loss.detach(), torch.stack(losses).mean(), rtol=1e-10, atol=0)
    mean_grad = {k: torch.stack([g[k] for g in per_signal_grads]).mean(0) for k in batched_grad}
    assert_params_close(batched_grad, mean_grad, rtol=1e-8, atol=1e-12)
    # the mean, not the sum: a sum would be 3x
    assert not torch.allclose(flat(batched_grad), 3 * flat(mean_grad), rtol=1e-3)


def test_maml_adapt_equals_hand_written_inner_loop():
    strategy = STRATS["maml"]()
    field, theta, coords, targets = setup(width=16, depth=3, batch=2)
    adapted = strategy.adapt(field, leaf(theta), coords, targets)
    for b in range(2):
        ref = hand_maml(field, leaf(theta), coords, targets[b], 3, 1e-2)
        assert_params_close({k: v[b] for k, v in adapted.items()}, ref, rtol=1e-10, atol=1e-13)


def test_gradncp_adapt_equals_hand_written_pruned_loop():
    strategy = STRATS["gradncp"]()
    c = strategy.config
    field, theta, coords, targets = setup(width=16, depth=3, batch=2)
    adapted = strategy.adapt(field, leaf(theta), coords, targets)
    for b in range(2):
        ref, chosen = hand_pruned(field, leaf(theta), coords, targets[b], c.inner_steps, c.inner_lr, c.gamma)
        assert all(len(s) == 9 for s in chosen)
        assert len(set(chosen)) > 1  # the context moves between steps here: re-ranking matters
        assert_params_close({k: v[b] for k, v in adapted.items()}, ref, rtol=1e-10, atol=1e-13)
        # and pruning is not the full context
        full = hand_maml(field, leaf(theta), coords, targets[b], c.inner_steps, c.inner_lr)
        assert (flat(full) - flat(ref)).abs().max() > 1e-4


# ---------------------------------------------------------- 4. second order vs finite differences


def outer_value(strategy, field, theta, coords, targets):
    return strategy.outer_loss(field, leaf(theta), coords, targets).loss.item()


def meta_grad(strategy, field, theta, coords, targets):
    th = leaf(theta)
    strategy.outer_loss(field, th, coords, targets).loss.backward()
    return grads_of(th)


class SelectionRecorder:
    """Wraps gradncp's top_context to record the index sets it picks."""

    def __init__(self):
        self.sets = []

    def __call__(self, scores, gamma):
        index = top_context(scores, gamma)
        self.sets.append([frozenset(row.tolist()) for row in index])
        return index


def finite_difference_check(strategy, field, theta, coords, targets, value, monkeypatch, n_entries=6):
    """Compare second- and first-order meta-gradients with central differences of ``value``."""
    so = meta_grad(strategy, field, theta, coords, targets)
    fo_strategy = type(strategy)(type(strategy.config)(**{**strategy.config.__dict__, "first_order": True}))
    fo = meta_grad(fo_strategy, field, theta, coords, targets)
    assert (flat(so) - flat(fo)).norm() > 0.05 * flat(so).norm(), "second order should matter here"

    recorder = SelectionRecorder()
    monkeypatch.setattr(gradncp_module, "top_context", recorder)
    gen = torch.Generator().manual_seed(7)
    eps = 1e-6
    names = sorted(theta)
    scale = flat(so).abs().max().item()
    checked, fo_misses = 0, 0
    tries = 0
    while checked < n_entries:
        tries += 1
        assert tries < 200, "could not find entries with a stable context selection"
        name = names[torch.randint(len(names), (1,), generator=gen).item()]
        pos = torch.randint(theta[name].numel(), (1,), generator=gen).item()
        g = so[name].flatten()[pos].item()
        if abs(g) < 1e-2 * scale:
            continue  # near-zero entries say little about relative agreement
        runs = []
        for sign in (1, -1, 0):
            t = {k: v.clone() for k, v in theta.items()}
            t[name].view(-1)[pos] += sign * eps
            recorder.sets.clear()
            runs.append((value(t), list(recorder.sets)))
        if not (runs[0][1] == runs[1][1] == runs[2][1]):
            continue  # the pruned context changed under the perturbation: not differentiable here
        fd = (runs[0][0] - runs[1][0]) / (2 * eps)
        assert fd == pytest.approx(g, rel=1e-4, abs=1e-7 * scale), (name, pos, fd, g)
        f = fo[name].flatten()[pos].item()
        if abs(f - fd) > 1e-2 * abs(fd):
            fo_misses += 1
        checked += 1
    assert fo_misses >= n_entries // 2, "the first-order gradient should not match the finite differences"


def test_maml_second_order_meta_gradient_matches_finite_differences(monkeypatch):
    field, theta, coords, targets = setup(width=8, depth=3, shape=(5, 5), batch=2, seed=1)
    strategy = Maml(MamlConfig(inner_steps=2, inner_lr=3e-2))
    finite_difference_check(
        strategy, field, theta, coords, targets, lambda t: outer_value(strategy, field, t, coords, targets), monkeypatch
    )


def test_gradncp_second_order_meta_gradient_matches_finite_differences(monkeypatch):
    """lam = 0 here: the outer loss is then a function of theta alone (the target, by design,
    is a stop-gradient, so the full loss's finite differences would see through it)."""
    field, theta, coords, targets = setup(width=8, depth=3, shape=(5, 5), batch=2, seed=1)
    strategy = GradNCP(GradNCPConfig(inner_steps=3, inner_lr=3e-2, gamma=0.4, lam=0.0))
    finite_difference_check(
        strategy, field, theta, coords, targets, lambda t: outer_value(strategy, field, t, coords, targets), monkeypatch
    )


def test_gradncp_meta_gradient_with_bootstrap_matches_finite_differences_of_fixed_target_loss(monkeypatch):
    """With lam > 0 the gradient is that of MSE(theta_K) + lam * ||T - theta_K|| with T held
    at its value at theta: finite differences of exactly that function."""
    field, theta, coords, targets = setup(width=8, depth=3, shape=(5, 5), batch=2, seed=1)
    strategy = GradNCP(GradNCPConfig(inner_steps=3, inner_lr=3e-2, gamma=0.4, boot_steps=3, boot_lr=5e-2, lam=2.0))
    c = strategy.config
    fixed = bootstrap_target(
        field, strategy.adapt(field, leaf(theta), coords, targets), coords, targets, c.boot_steps, c.boot_lr
    )

    def value(t):
        th = leaf(t)
        pk = strategy.adapt(field, th, coords, targets)
        mse = per_signal_mse(field, pk, coords, targets)
        d = torch.sqrt(sum((fixed[k] - pk[k]).pow(2).flatten(1).sum(1) for k in pk))
        return (mse + c.lam * d).mean().item()

    finite_difference_check(strategy, field, theta, coords, targets, value, monkeypatch)


# ---------------------------------------------------------- 5. the bootstrap target


def test_bootstrap_target_is_a_constant_of_first_order_full_context_steps():
    field, theta, coords, targets = setup(width=16, batch=2)
    th = leaf(theta)
    params = STRATS["maml"]().adapt(field, th, coords, targets)  # carries a graph to theta
    assert all(v.grad_fn is not None for v in params.values())
    target = bootstrap_target(field, params, coords, targets, 3, 5e-2)
    for v in target.values():
        assert not v.requires_grad and v.grad_fn is None
    for b in range(2):
        ref = hand_boot(field, {k: v[b] for k, v in params.items()}, coords, targets[b], 3, 5e-2)
        assert_params_close({k: v[b] for k, v in target.items()}, ref, rtol=1e-10, atol=1e-13)
    # the input keeps its graph; zero steps give the input's values
    assert all(v.requires_grad for v in params.values())
    zero = bootstrap_target(field, params, coords, targets, 0, 5e-2)
    assert_params_close(zero, {k: v.detach() for k, v in params.items()}, rtol=0, atol=0)


def test_gradncp_outer_gradient_treats_the_target_as_constant():
    strategy = STRATS["gradncp"]()
    c = strategy.config
    field, theta, coords, targets = setup(width=16, batch=3)
    th = leaf(theta)
    result = strategy.outer_loss(field, th, coords, targets)
    result.loss.backward()
    got = grads_of(th)

    # by hand, per signal: the pruned loop, then the target computed and passed as data
    ref_theta = leaf(theta)
    total = 0.0
    for b in range(3):
        pk, _ = hand_pruned(field, ref_theta, coords, targets[b], c.inner_steps, c.inner_lr, c.gamma)
        target = hand_boot(field, pk, coords, targets[b], c.boot_steps, c.boot_lr)
        total = total + mse1(field, pk, coords, targets[b]) + c.lam * dist(target, pk)
    (total / 3).backward()
    torch.testing.assert_close(result.loss.detach(), (total / 3).detach(), rtol=1e-10, atol=0)
    assert_params_close(got, grads_of(ref_theta), rtol=1e-8, atol=1e-12)

    # and the lam term matters: without it the gradient is clearly different
    no_boot = meta_grad(GradNCP(GradNCPConfig(**{**c.__dict__, "lam": 0.0})), field, theta, coords, targets)
    assert (flat(got) - flat(no_boot)).norm() > 0.05 * flat(got).norm()


# ---------------------------------------------------------- 6. reductions


def test_gradncp_without_bootstrap_is_pruned_maml():
    field, theta, coords, targets = setup(width=16, batch=2)
    base = {"inner_steps": 3, "inner_lr": 2e-2, "gamma": 0.3, "boot_steps": 4, "boot_lr": 5e-2, "lam": 50.0}
    ref_theta = leaf(theta)
    ref = (
        sum(
            mse1(field, hand_pruned(field, ref_theta, coords, targets[b], 3, 2e-2, 0.3)[0], coords, targets[b])
            for b in range(2)
        )
        / 2
    )
    ref.backward()
    ref_grad = grads_of(ref_theta)
    for change in ({"lam": 0.0}, {"boot_steps": 0}):
        strategy = GradNCP(GradNCPConfig(**{**base, **change}))
        th = leaf(theta)
        r = strategy.outer_loss(field, th, coords, targets)
        r.loss.backward()
        torch.testing.assert_close(r.loss.detach(), ref.detach(), rtol=1e-10, atol=0)
        torch.testing.assert_close(r.mse.mean(), ref.detach(), rtol=1e-10, atol=0)
        assert_params_close(grads_of(th), ref_grad, rtol=1e-8, atol=1e-12)
    # with the bootstrap term the loss is larger (the distance is positive)
    full = GradNCP(GradNCPConfig(**base)).outer_loss(field, leaf(theta), coords, targets)
    assert full.loss.item() > ref.item() + 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_gradncp_with_full_context_and_no_bootstrap_is_maml(first_order):
    field, theta, coords, targets = setup(width=16, batch=3)
    g = GradNCP(GradNCPConfig(inner_steps=3, inner_lr=2e-2, gamma=1.0, lam=0.0, first_order=first_order))
    m = Maml(MamlConfig(inner_steps=3, inner_lr=2e-2, first_order=first_order))
    results = []
    for strategy in (g, m):
        th = leaf(theta)
        r = strategy.outer_loss(field, th, coords, targets)
        r.loss.backward()
        results.append((r.loss.detach(), grads_of(th)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-10, atol=0)
    assert_params_close(results[0][1], results[1][1], rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------- 6b. checkpointed outer loss


def saved_elements(fn):
    """Run ``fn`` and count the elements of the distinct storages autograd saves for its
    backward (what its graph holds; a tensor saved twice, or a view, counts once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def test_checkpointed_mse_has_the_same_value_and_gradient_and_keeps_no_activations():
    field, theta, coords, targets = setup(width=16, depth=3, shape=(9, 7), batch=3)
    th = leaf(theta)
    params = Maml(MamlConfig(inner_steps=1)).adapt(field, th, coords, targets)  # [B, ...] with a graph to th
    plain, plain_saved = saved_elements(lambda: per_signal_mse(field, params, coords, targets))
    # 5 points x 3 signals a piece: 13 pieces over 63 points, the last one short
    pieced, pieced_saved = saved_elements(lambda: checkpointed_mse(field, params, coords, targets, chunk=15))
    torch.testing.assert_close(pieced, plain, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(plain.sum(), list(th.values()), retain_graph=True),
                    torch.autograd.grad(pieced.sum(), list(th.values()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)
    inputs = sum(v.numel() for v in params.values()) + coords.numel() + targets.numel()
    assert plain_saved > inputs + 3 * 63 * 16 * 2  # and the activations: two hidden layers' inputs at least
    assert pieced_saved <= inputs, (pieced_saved, inputs)  # the pieces' inputs only, recomputed from them


@pytest.mark.parametrize("name", ["maml", "gradncp"])
def test_gradient_checkpointing_keeps_parameters_not_activations(name):
    """What a checkpointed meta-step keeps for its backward: each step's parameters and
    inputs, none of the activations of the second-order inner steps or of the outer loss."""
    field, theta, coords, targets = setup(width=32, depth=3, shape=(12, 12), batch=3)
    options = {"inner_steps": 3} | ({"gamma": 0.25, "boot_steps": 0} if name == "gradncp" else {})
    saved = {}
    for checkpoint in (False, True):
        strategy = build_strategy(name, {**options, "gradient_checkpointing": checkpoint})
        _, saved[checkpoint] = saved_elements(lambda: strategy.outer_loss(field, leaf(theta), coords, targets))
    per_step = 3 * sum(v.numel() for v in theta.values()) + coords.numel() + targets.numel()
    assert saved[True] <= (3 + 1) * per_step < saved[False] / 4, (saved, per_step)


@pytest.mark.parametrize("name", ["maml", "gradncp"])
@pytest.mark.parametrize("first_order", [False, True])
def test_gradient_checkpointing_gives_the_same_outer_loss_and_meta_gradient(name, first_order):
    field, theta, coords, targets = setup(width=16, depth=3, shape=(8, 8), batch=3)
    base = {"inner_steps": 3, "inner_lr": 3e-2, "first_order": first_order}
    if name == "gradncp":
        base |= {"gamma": 0.25, "boot_steps": 2, "lam": 10.0, "chunk": 24}  # pieces of 8 points
    results = []
    for checkpoint in (False, True):
        th = leaf(theta)
        r = build_strategy(name, {**base, "gradient_checkpointing": checkpoint}).outer_loss(field, th, coords, targets)
        r.loss.backward()
        results.append((r.loss.detach(), r.mse, grads_of(th)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-12, atol=0)
    assert_params_close(results[1][2], results[0][2], rtol=1e-9, atol=1e-13)


# ---------------------------------------------------------- 7. Algorithm 2: fit_sgd


def hand_fit_sgd(field, init, targets, coords, steps, lr, gamma, rescale, per_layer=False):
    """Algorithm 2 for each signal alone, from autograd gradients."""
    out = []
    for y in targets:
        p = {k: v.clone() for k, v in init.items()}
        for _ in range(steps):
            p = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            g_full = torch.autograd.grad(mse1(field, p, coords, y), list(p.values()))
            scale = [lr] * len(g_full)
            if rescale:
                with torch.no_grad():
                    idx = top_by_sort(hand_scores(field, p, coords, y), gamma)
                g_high = torch.autograd.grad(mse1(field, p, coords[idx], y[idx]), list(p.values()))
                if per_layer:
                    scale = [lr * gh.norm() / gf.norm() for gh, gf in zip(g_high, g_full)]
                else:
                    norm = lambda gs: torch.sqrt(sum(g.pow(2).sum() for g in gs))
                    ratio = norm(g_high) / norm(g_full)
                    scale = [lr * ratio] * len(g_full)
            p = {k: (v - s * g).detach() for (k, v), g, s in zip(p.items(), g_full, scale)}
        out.append(p)
    return {k: torch.stack([p[k] for p in out]) for k in init}


def _fit_setup():
    field, theta, _, _ = setup(width=16, depth=3, shape=(8, 8), batch=3, dtype=torch.float32)
    coords = grid_coords((8, 8))
    gen = torch.Generator().manual_seed(11)
    targets = torch.rand(3, 64, 3, generator=gen)
    return field, theta, coords, targets


TOL32 = {"rtol": 2e-4, "atol": 2e-6}


@pytest.mark.parametrize("steps", [1, 2])
def test_fit_sgd_rescaled_step_uses_the_global_norm_ratio(steps):
    field, theta, coords, targets = _fit_setup()
    config = AdaptConfig(steps=steps, lr=1e-2, gamma=0.25, rescale=True)
    got = fit_sgd(field, theta, targets, (8, 8), config).params
    want = hand_fit_sgd(field, theta, targets, coords, steps, 1e-2, 0.25, rescale=True)
    assert_params_close(got, want, **TOL32)
    # the re-scaling is not a no-op, and per-layer ratios would be a different algorithm
    plain = hand_fit_sgd(field, theta, targets, coords, steps, 1e-2, 0.25, rescale=False)
    layered = hand_fit_sgd(field, theta, targets, coords, steps, 1e-2, 0.25, rescale=True, per_layer=True)
    moved = (flat(want) - flat({k: v.unsqueeze(0).expand_as(want[k]) for k, v in theta.items()})).abs().max()
    assert (flat(got) - flat(plain)).abs().max() > 0.1 * moved
    assert (flat(got) - flat(layered)).abs().max() > 0.01 * moved


def test_fit_sgd_without_rescale_is_plain_sgd():
    field, theta, coords, targets = _fit_setup()
    got = fit_sgd(field, theta, targets, (8, 8), AdaptConfig(steps=3, lr=1e-2, rescale=False)).params
    want = hand_fit_sgd(field, theta, targets, coords, 3, 1e-2, 0.25, rescale=False)
    assert_params_close(got, want, **TOL32)


@pytest.mark.parametrize("rescale", [True, False])
def test_fit_sgd_chunked_equals_one_chunk_and_batch_equals_alone(rescale):
    field, theta, _, targets = _fit_setup()
    whole = fit_sgd(field, theta, targets, (8, 8), AdaptConfig(steps=3, rescale=rescale, chunk=1 << 20))
    chunked = fit_sgd(field, theta, targets, (8, 8), AdaptConfig(steps=3, rescale=rescale, chunk=7))
    assert_params_close(chunked.params, whole.params, rtol=1e-5, atol=1e-6)
    for a, b in zip(chunked.psnr, whole.psnr):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for i in range(3):
        alone = fit_sgd(field, theta, targets[i : i + 1], (8, 8), AdaptConfig(steps=3, rescale=rescale))
        assert_params_close({k: v[i : i + 1] for k, v in whole.params.items()}, alone.params, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole.psnr[-1][i : i + 1], alone.psnr[-1], rtol=1e-5, atol=1e-4)


def test_fit_sgd_reports_every_step():
    field, theta, _, targets = _fit_setup()
    theta = dict(theta, **{"l2.bias": theta["l2.bias"] + 0.6})  # predictions start above 1: clamping matters
    seen, infos = [], []

    def observe(step, params):
        assert not torch.is_grad_enabled()
        seen.append((step, {k: v.detach().clone() for k, v in params.items()}))

    result = fit_sgd(field, theta, targets, (8, 8), AdaptConfig(steps=4), on_step=infos.append, observe=observe)
    assert len(result.psnr) == 5 and all(p.shape == (3,) for p in result.psnr)
    assert [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert [i.step for i in infos] == [1, 2, 3, 4]
    assert_params_close(seen[0][1], {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in theta.items()}, rtol=0, atol=0)
    assert_params_close(seen[-1][1], result.params, rtol=0, atol=0)
    # psnr[k] is the PSNR of the clamped predictions after k steps
    for step, params in seen:
        pred = field(params, grid_coords((8, 8)))
        mse = (pred.clamp(0, 1) - targets).pow(2).mean(dim=(1, 2))
        torch.testing.assert_close(result.psnr[step], -10 * torch.log10(mse), rtol=1e-5, atol=1e-4)
        if step == 0:
            assert ((pred - targets).pow(2).mean(dim=(1, 2)) > 1.2 * mse).all()
    assert (result.psnr[-1] > result.psnr[0]).all()  # fitting helps


# ---------------------------------------------------------- 8. full_pass


@pytest.mark.parametrize("chunk", [1 << 20, 2 * 6, 2 * 7, 1])  # whole; 6 divides N = 36; 7 does not; one point
@pytest.mark.parametrize("per_signal_coords", [False, True])
def test_full_pass_equals_autograd_of_whole_context(chunk, per_signal_coords):
    field, theta, coords, targets = setup(width=16, depth=3, shape=(6, 6), batch=2)
    base = batch_params(theta, 2)
    base["l2.bias"] = base["l2.bias"] + torch.tensor([[0.0], [0.7]], dtype=F64)  # clamping bites on signal 1
    c = torch.stack([coords, coords.flip(0) * 0.9]) if per_signal_coords else coords
    params = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    grads, mse, mse_clamped, score = full_pass(field, params, c, targets, chunk, scores=True)
    assert all(p.grad is None for p in params.values())  # returned, not accumulated
    for b in range(2):
        p = {k: v[b].clone().requires_grad_(True) for k, v in base.items()}
        cb = c[b] if per_signal_coords else c
        loss = mse1(field, p, cb, targets[b])
        want = torch.autograd.grad(loss, list(p.values()))
        for g, w in zip(grads, want):
            torch.testing.assert_close(g[b], w, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(mse[b], loss.detach(), rtol=1e-12, atol=0)
        clamped = (f1(field, p, cb).clamp(0, 1) - targets[b]).pow(2).mean().detach()
        torch.testing.assert_close(mse_clamped[b], clamped, rtol=1e-12, atol=0)
    assert (mse_clamped < mse).any()
    torch.testing.assert_close(score, context_scores(field, params, c, targets), rtol=1e-12, atol=1e-15)
    assert full_pass(field, params, c, targets, chunk)[3] is None


# ---------------------------------------------------------- 9. the registry


def test_build_strategy_refuses_bad_names_options_and_values():
    with pytest.raises(ConfigError, match="unknown algorithm") as info:
        build_strategy("reptile")
    assert info.value.where == "--algo"
    with pytest.raises(ConfigError, match="--gamma") as info:
        build_strategy("maml", {"gamma": 0.5})
    assert "maml" in str(info.value)
    with pytest.raises(ConfigError, match="--boot-steps"):
        build_strategy("maml", {"boot_steps": 3, "inner_steps": 2})
    assert build_strategy("maml", {"gamma": None}).config == MamlConfig()  # None: keep the default
    for options, where in [
        ({"gamma": 0}, "--gamma"),
        ({"gamma": 1.5}, "--gamma"),
        ({"inner_steps": 0}, "--inner-steps"),
        ({"inner_lr": 0.0}, "--inner-lr"),
        ({"boot_lr": -1.0}, "--boot-lr"),
        ({"boot_steps": -1}, "--boot-steps"),
        ({"lam": -1.0}, "--lam"),
    ]:
        with pytest.raises(ConfigError) as info:
            build_strategy("gradncp", options)
        assert info.value.where == where, options
    with pytest.raises(ConfigError) as info:
        build_strategy("maml", {"inner_steps": 0})
    assert info.value.where == "--inner-steps"
    s = build_strategy("gradncp", {"gamma": 0.5, "inner_steps": 2})
    assert (s.config.gamma, s.config.inner_steps, s.config.lam) == (0.5, 2, GradNCPConfig().lam)


@pytest.mark.parametrize("option", [{"lam": float("nan")}, {"lam": float("inf")}, {"inner_lr": float("inf")},
                                    {"boot_lr": float("nan")}])
def test_non_finite_hyperparameters_are_refused(option):
    with pytest.raises(ConfigError):
        build_strategy("gradncp", option)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_takes_an_outer_step(name):
    strategy = build_strategy(name)  # the reference defaults
    assert strategy.name == name
    field, theta, coords, targets = setup(width=16, depth=3, shape=(8, 8), batch=2, dtype=torch.float32)
    th = leaf(theta)
    result = strategy.outer_loss(field, th, coords, targets)
    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    assert result.mse.shape == (2,) and torch.isfinite(result.mse).all() and not result.mse.requires_grad
    result.loss.backward()
    for k, v in th.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        assert v.grad.abs().max() > 0, k
    before = {k: v.detach().clone() for k, v in th.items()}
    opt = torch.optim.Adam(th.values(), lr=1e-4)
    opt.step()
    assert all(not torch.equal(before[k], th[k]) for k in th)


# ---------------------------------------------------------- 10. training helps


def test_a_few_outer_steps_of_maml_lower_the_adapted_error(data_dir):
    images = [load_image(data_dir / n, 12, 3) for n in ("chelsea_48x32.png", "rocket_48x32.jpg", "camera_32.png")]
    signals = []
    for im in images:
        signals += [im, im.flip(1), im.flip(0)]
    targets = torch.stack(signals).reshape(len(signals), -1, 3)  # [9, 144, 3]
    torch.manual_seed(0)
    field = build_field("siren", {"in_dim": 2, "out_dim": 3, "width": 32, "depth": 3})
    coords = grid_coords((12, 12))
    strategy = Maml(MamlConfig(inner_steps=4, inner_lr=1e-2))
    theta = leaf(random_init(field, 0))

    def adapted_mse():
        return strategy.outer_loss(field, theta, coords, targets).mse.mean().item()

    before = adapted_mse()
    opt = torch.optim.Adam(theta.values(), lr=1e-4)
    for step in range(60):
        batch = targets[[(3 * step + j) % 9 for j in range(3)]]
        opt.zero_grad()
        strategy.outer_loss(field, theta, coords, batch).loss.backward()
        opt.step()
    after = adapted_mse()
    assert after < 0.85 * before, (before, after)  # measured: 0.047 -> 0.036
