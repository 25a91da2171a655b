"""The scorers against computations written out in the test: SNIP, GraSP (with an explicit Hessian), SynFlow
(closed-form path products), and what scoring must never do (change the model, run under autocast)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_ticket
from torch import nn

from ettcli.pruning import Target, make_target, prune_run, pruned_tensors
from ettcli.scores import (
    grasp_scores,
    linearised,
    model_from_ticket,
    snip_scores,
    synflow_masks,
    synflow_round,
    synflow_scores,
)


def tiny_net(seed: int = 0) -> nn.Sequential:
    """conv (with BatchNorm) + linear: 18 + 96 = 114 scored weights, small enough for a full Hessian."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 3),
    )
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
        net[1].running_mean.uniform_(-0.1, 0.1)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


NAMES = ["0.weight", "4.weight"]


def batch(seed: int = 1, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3


def test_snip_equals_gradient_times_weight():
    net, (x, y) = tiny_net(), batch()
    got = snip_scores(net, NAMES, x, y)
    ref = copy.deepcopy(net).train()
    F.cross_entropy(ref(x), y).backward()  # mean over the batch, BatchNorm on batch statistics
    params = dict(ref.named_parameters())
    for n in NAMES:
        want = (params[n].grad * params[n].detach()).abs().numpy()
        assert got[n].dtype == np.float32 and got[n].shape == want.shape
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-9)
    # eval mode is a different computation (running statistics)
    assert not np.allclose(snip_scores(net, NAMES, x, y, bn="eval")["0.weight"], got["0.weight"])


def _flat_loss(net, x, y, temperature):
    """The loss as a function of the scored weights flattened into one vector (everything else fixed)."""
    base = dict(net.named_parameters())
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    shapes = [base[n].shape for n in NAMES]
    sizes = [math.prod(s) for s in shapes]

    def loss(theta):
        parts = dict(zip(NAMES, (p.view(s) for p, s in zip(torch.split(theta, sizes), shapes))))
        params = {k: (parts[k] if k in parts else v.detach()) for k, v in base.items()}
        out = torch.func.functional_call(net, {**params, **buffers}, (x,))
        return F.cross_entropy(out / temperature, y)

    theta = torch.cat([base[n].detach().reshape(-1) for n in NAMES])
    return loss, theta, sizes, shapes


def test_grasp_equals_minus_w_times_explicit_hessian_gradient():
    net, (x, y) = tiny_net(), batch()
    net.train()
    got = grasp_scores(net, NAMES, x, y)  # T = 200
    loss, theta, sizes, shapes = _flat_loss(copy.deepcopy(net).train(), x, y, 200.0)
    g = torch.autograd.functional.jacobian(loss, theta)
    h = torch.autograd.functional.hessian(loss, theta)  # 114 x 114
    s = -(theta * (h @ g))
    for n, part, shape in zip(NAMES, torch.split(s, sizes), shapes):
        assert got[n].dtype == np.float32
        np.testing.assert_allclose(got[n], part.view(shape).numpy(), rtol=1e-4, atol=1e-12)
    # the temperature enters both passes: T = 1 gives other scores, not a rescaling of these
    t1 = grasp_scores(net, NAMES, x, y, temperature=1.0)
    ratio = t1["4.weight"] / got["4.weight"]
    assert np.ptp(ratio[np.isfinite(ratio)]) > 1e-3


def test_grasp_removes_the_largest_s_and_grasp_abs_is_a_different_method():
    ticket = make_ticket("cifar_resnet_8_4", 0.0, seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    y = np.arange(20) % 10
    model = model_from_ticket(ticket)
    names = ticket.prunable()
    s = grasp_scores(model, names, torch.from_numpy(x), torch.from_numpy(y))
    flat = np.concatenate([s[n].reshape(-1) for n in names]).astype(np.float64)
    keep = round(0.3 * flat.size)
    grasp = prune_run(ticket, "grasp", sparsity=0.7, data=(x, y)).ticket
    grasp_abs = prune_run(ticket, "grasp-abs", sparsity=0.7, data=(x, y)).ticket
    kept = np.concatenate([grasp.masks[n].array.reshape(-1) for n in names])
    kept_abs = np.concatenate([grasp_abs.masks[n].array.reshape(-1) for n in names])
    assert kept.sum() == kept_abs.sum() == keep
    # grasp keeps the smallest S: every kept S is below every removed S
    assert flat[kept].max() <= flat[~kept].min()
    assert np.abs(flat[kept_abs]).min() >= np.abs(flat[~kept_abs]).max()
    # S has both signs here, so the two rules must disagree; the largest positive S shows it
    assert flat.min() < 0 < flat.max()
    top = int(np.argmax(flat))
    assert kept_abs[top] and not kept[top]
    assert (kept != kept_abs).sum() > 0.1 * keep
    inverted = prune_run(ticket, "grasp", sparsity=0.7, data=(x, y), invert=True).ticket
    kept_inv = np.concatenate([inverted.masks[n].array.reshape(-1) for n in names])
    assert flat[kept_inv].min() >= flat[~kept_inv].max()  # --invert keeps the largest S


def _two_layer(seed=0, n0=5, n1=4, n2=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n0, n1, bias=False), nn.Linear(n1, n2, bias=False))


def _closed_form(w1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = W2 W1 x, x = 1, |W|: dR/dW1[j, i] = sum_k |W2[k, j]|, dR/dW2[k, j] = sum_i |W1[j, i]|."""
    a1, a2 = np.abs(w1), np.abs(w2)
    d1 = np.broadcast_to(a2.sum(axis=0)[:, None], a1.shape)
    d2 = np.broadcast_to(a1.sum(axis=1)[None, :], a2.shape)
    return a1 * d1, a2 * d2


def test_synflow_scores_equal_closed_form_path_products():
    net = _two_layer()
    got = synflow_scores(net, ["0.weight", "1.weight"], (5,))
    w1, w2 = (p.detach().double().numpy() for p in net.parameters())
    s1, s2 = _closed_form(w1, w2)
    assert got["0.weight"].dtype == np.float64
    np.testing.assert_allclose(got["0.weight"], s1, rtol=1e-12)
    np.testing.assert_allclose(got["1.weight"], s2, rtol=1e-12)
    # conservation: every layer carries the same total synaptic flow R
    assert got["0.weight"].sum() == pytest.approx(got["1.weight"].sum(), rel=1e-12)


def test_synflow_rounds_follow_the_exponential_schedule_with_masks_applied():
    net = _two_layer(seed=3, n0=6, n1=5, n2=4)
    shapes = {"0.weight": (5, 6), "1.weight": (4, 5)}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    target = Target(sizes, shapes, total=50, keep=12)
    rounds = 4
    got = synflow_masks(net, target, (6,), rounds=rounds)

    # the same loop written out with the closed form
    w1, w2 = (p.detach().double().numpy() for p in net.parameters())
    m1, m2 = np.ones_like(w1, bool), np.ones_like(w2, bool)
    for k in range(1, rounds + 1):
        s1, s2 = _closed_form(w1 * m1, w2 * m2)
        flat = np.concatenate([np.where(m1, s1, -np.inf).ravel(), np.where(m2, s2, -np.inf).ravel()])
        keep = round(50 * (12 / 50) ** (k / rounds))
        chosen = np.zeros(50, bool)
        chosen[np.argsort(-flat, kind="stable")[:keep]] = True
        assert chosen.sum() == keep and not (chosen & ~np.concatenate([m1.ravel(), m2.ravel()])).any()
        m1, m2 = chosen[:30].reshape(5, 6), chosen[30:].reshape(4, 5)
    assert np.array_equal(got["0.weight"].array, m1) and np.array_equal(got["1.weight"].array, m2)
    assert got["0.weight"].kept + got["1.weight"].kept == 12


def test_synflow_is_finite_in_float64_on_a_56_layer_resnet():
    ticket = make_ticket("cifar_resnet_56", 0.0)
    model = model_from_ticket(ticket)
    names = ticket.prunable()
    scores = synflow_scores(model, names, (3, 32, 32))
    flat = np.concatenate([s.ravel() for s in scores.values()])
    assert np.isfinite(flat).all() and flat.max() > 1e30  # R is far beyond float32's range ...
    net32 = linearised(model).float()
    with torch.no_grad():
        assert not torch.isfinite(net32(torch.ones(1, 3, 32, 32)).sum())  # ... which is why float64
    # the whole iterative run at a high sparsity is exact and finite too
    names_p, dense = pruned_tensors(ticket, None, None)
    target = make_target(ticket, names_p, dense, sparsity=0.98)
    masks = synflow_masks(model, target, (3, 32, 32), rounds=10)
    assert sum(m.kept for m in masks.values()) == target.keep
    assert all(m.kept > 0 for m in masks.values())  # SynFlow avoids layer collapse


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_scoring_leaves_the_model_and_its_batchnorm_statistics_unchanged():
    ticket = make_ticket("cifar_resnet_8_4", 0.0, seed=4)
    model = model_from_ticket(ticket)
    model.eval()
    before = _state(model)
    names = ticket.prunable()
    x, y = torch.randn(20, 3, 32, 32), torch.arange(20) % 10
    snip_scores(model, names, x, y)
    grasp_scores(model, names, x, y)
    synflow_scores(model, names, (3, 32, 32))
    after = _state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # running_mean / running_var / num_batches_tracked included
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_scores_are_float32_or_better_under_autocast():
    net, (x, y) = tiny_net(), batch()
    plain_snip = snip_scores(net, NAMES, x, y)
    plain_grasp = grasp_scores(net, NAMES, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_snip = snip_scores(net, NAMES, x, y)
        auto_grasp = grasp_scores(net, NAMES, x, y)
        auto_flow = synflow_scores(net, NAMES, (1, 4, 4))
    for n in NAMES:
        assert auto_snip[n].dtype == np.float32 and auto_grasp[n].dtype == np.float32
        assert auto_flow[n].dtype == np.float64
        assert np.array_equal(auto_snip[n], plain_snip[n])
        assert np.array_equal(auto_grasp[n], plain_grasp[n])
    # and the same computation under bf16 would have differed (the reason autocast is turned off)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = copy.deepcopy(net).train()(x)
    assert out.dtype == torch.bfloat16


def test_synflow_round_gives_zero_scores_to_masked_weights():
    net = linearised(_two_layer())
    params = list(net.parameters())
    with torch.no_grad():
        params[0][0].zero_()
    s = synflow_round(net, params, (5,))
    assert torch.all(s[0][0] == 0) and torch.all(s[0][1:] > 0)


def test_snip_and_grasp_compute_in_ieee_float32_even_after_training_turned_tf32_on():
    """Training sets TF32 for speed; on GPUs from Ampere on, "float32" scores would then be TF32 products."""
    from ettcli.train import backend_flags

    net, (x, y) = tiny_net(), batch()
    seen = []

    def record(module, inputs):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))

    net[0].register_forward_pre_hook(record)  # the hook travels with the scoring copy
    with backend_flags("cuda", deterministic=False):  # as train_ticket leaves them during a GPU run
        snip_scores(net, NAMES, x, y)
        grasp_scores(net, NAMES, x, y)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # restored after scoring
    assert seen and all(s == ("ieee", "ieee") for s in seen), seen
