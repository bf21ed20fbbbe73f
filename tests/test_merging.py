"""Weight-space merging checked by hand on tiny tensors: task arithmetic, TIES, Fisher merging, BatchNorm reset."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn

from transfuse.data.transforms import BatchTransform
from transfuse.errors import FusionError
from transfuse.fusion.members import Classifier, Member
from transfuse.fusion.merging import (
    diagonal_fisher,
    fisher_merge,
    reset_bn,
    task_arithmetic,
    task_vectors,
    ties,
    ties_vector,
)
from transfuse.fusion.methods import FisherMerge, TaskArithmetic, Ties, UniformSoup
from transfuse.fusion.pool import Pool
from transfuse.fusion.soups import average_state_dicts

T = torch.tensor


def _members(source: dict, vectors: list[dict]) -> list[dict]:
    return [{k: source[k] + v[k] for k in source} for v in vectors]


def test_task_vectors_are_members_minus_source():
    source = {"w": T([1.0, 2.0]), "n": T(3)}
    (vector,) = task_vectors(source, [{"w": T([4.0, 0.0]), "n": T(5)}])
    assert vector.keys() == {"w"}  # integer buffers have no task vector
    torch.testing.assert_close(vector["w"], T([3.0, -2.0]))


def test_task_arithmetic_adds_the_scaled_sum_of_task_vectors():
    source = {"w": T([1.0, 1.0, 1.0])}
    members = _members(source, [{"w": T([2.0, 0.0, -1.0])}, {"w": T([4.0, -2.0, 1.0])}])
    merged = task_arithmetic(source, members, 0.5)
    torch.testing.assert_close(merged["w"], T([1.0 + 0.5 * 6, 1.0 + 0.5 * -2, 1.0 + 0.5 * 0]))
    # scale 1/M is the uniform soup
    torch.testing.assert_close(task_arithmetic(source, members, 0.5)["w"], average_state_dicts(members)["w"])
    # scale 0 is the source
    torch.testing.assert_close(task_arithmetic(source, members, 0.0)["w"], source["w"])


def test_tensors_the_source_lacks_are_averaged_and_integer_buffers_come_from_the_first_member():
    source = {"backbone.w": T([0.0])}  # a source of other classes: its classifier was dropped
    a = {"backbone.w": T([1.0]), "head.w": T([2.0]), "bn.num_batches_tracked": T(3)}
    b = {"backbone.w": T([3.0]), "head.w": T([6.0]), "bn.num_batches_tracked": T(9)}
    for merged in (task_arithmetic(source, [a, b], 1.0), ties(source, [a, b], 1.0, density=1.0)):
        torch.testing.assert_close(merged["head.w"], T([4.0]))
        assert merged["bn.num_batches_tracked"] == 3
    assert task_arithmetic(source, [a, b], 1.0)["backbone.w"] == 4.0  # 0 + (1 + 3)


def test_ties_trims_elects_the_sign_and_takes_the_disjoint_mean():
    vectors = [
        {"w": T([4.0, -1.0, 0.5, -3.0])},  # top 2 by magnitude: 4, -3
        {"w": T([-2.5, -3.0, 1.0, 2.0])},  # -2.5, -3
        {"w": T([1.0, 2.0, -5.0, 1.0])},  # 2, -5
    ]
    # trimmed sums 1.5, -1, -5, -3: signs +, -, -, -; the means of the agreeing kept values: 4, -3, -5, -3
    torch.testing.assert_close(ties_vector(vectors, density=0.5)["w"], T([4.0, -3.0, -5.0, -3.0]))
    source = {"w": T([1.0, 1.0, 1.0, 1.0])}
    merged = ties(source, _members(source, vectors), scale=0.5, density=0.5)
    torch.testing.assert_close(merged["w"], T([3.0, -0.5, -1.5, -0.5]))


def test_ties_trims_over_the_whole_vector_not_per_tensor():
    vectors = [{"a": T([4.0, -1.0]), "b": T([0.5, -3.0])}, {"a": T([-2.5, -3.0]), "b": T([1.0, 2.0])}]
    merged = ties_vector(vectors, density=0.5)
    # kept: 4 and -3 of the first, -2.5 and -3 of the second; "b"[1]: -3 alone (the second's 2 was trimmed)
    torch.testing.assert_close(merged["a"], T([4.0, -3.0]))
    torch.testing.assert_close(merged["b"], T([0.0, -3.0]))


def test_ties_of_opposite_equal_values_is_zero_and_density_is_checked():
    vectors = [{"w": T([2.0])}, {"w": T([-2.0])}]
    assert ties_vector(vectors, density=1.0)["w"] == 0.0
    with pytest.raises(FusionError, match=r"density must be in \(0, 1\]"):
        ties_vector(vectors, density=0.0)


def test_fisher_merge_weighs_each_entry_by_its_fisher():
    states = [{"w": T([0.0, 2.0]), "n": T(1)}, {"w": T([4.0, 6.0]), "n": T(2)}]
    fishers = [{"w": T([3.0, 1.0])}, {"w": T([1.0, 1.0])}]
    merged = fisher_merge(states, fishers, floor=0.0)
    torch.testing.assert_close(merged["w"], T([(3 * 0 + 1 * 4) / 4, (2 + 6) / 2]))
    assert merged["n"] == 1
    # no information anywhere: the plain mean
    zero = [{"w": T([0.0, 0.0])}] * 2
    torch.testing.assert_close(fisher_merge(states, zero)["w"], T([2.0, 4.0]))


def test_diagonal_fisher_of_a_linear_layer_matches_the_analytic_gradient():
    torch.manual_seed(0)
    net = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    fisher = diagonal_fisher(net, [x[:2], x[2:]], labels=[y[:2], y[2:]])
    with torch.no_grad():
        p = torch.softmax(net(x), dim=-1)
        delta = nn.functional.one_hot(y, 4).float() - p  # d log p_y / d logits
        expected_w = torch.stack([torch.outer(d, xi) ** 2 for d, xi in zip(delta, x, strict=True)]).mean(0)
        expected_b = (delta**2).mean(0)
    torch.testing.assert_close(fisher["weight"], expected_w)
    torch.testing.assert_close(fisher["bias"], expected_b)
    # sampled labels (the true Fisher) need none and are reproducible
    sampled = diagonal_fisher(net, [x], seed=3)
    torch.testing.assert_close(sampled["weight"], diagonal_fisher(net, [x], seed=3)["weight"])


def _bn_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))


def test_reset_bn_changes_only_the_running_statistics():
    net = _bn_net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(16, 3) * 3 + 1
    reset_bn(net, [x[:8], x[8:]])
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert not net.training and after["1.num_batches_tracked"] == 2
    with torch.no_grad():  # the exact average of the two batches' statistics
        h = net[0](x)
    torch.testing.assert_close(after["1.running_mean"], (h[:8].mean(0) + h[8:].mean(0)) / 2)
    torch.testing.assert_close(after["1.running_var"], (h[:8].var(0) + h[8:].var(0)) / 2)
    assert net[1].momentum == 0.1  # restored


def test_reset_bn_leaves_a_network_without_batchnorm_alone():
    net = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reset_bn(net, [torch.randn(4, 3)])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --- the thin methods over a pool of tiny members ------------------------------------------------------------
def _member(net: nn.Module, source: str) -> Member:
    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"run{id(net)}", run_name="m"))
    return Member(run, None, net.eval(), BatchTransform(2, 3, [0.5], [0.5]), source)


def _net(seed: int, width: int = 4) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.BatchNorm1d(width)), nn.Linear(width, 3))


def _pool(nets: list[nn.Module], sources: list[str], source_state: dict | None = None) -> Pool:
    torch.manual_seed(0)
    images = {s: torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8) for s, n in (("train", 40), ("val", 30))}
    images["test"] = images["val"]
    labels = {s: torch.randint(0, 3, (len(x),)) for s, x in images.items()}
    members = [_member(n, s) for n, s in zip(nets, sources, strict=True)]
    return Pool.predict(members, images, labels, source_state)


def test_task_arithmetic_and_ties_choose_their_scale_on_validation():
    source = _net(0).state_dict()
    pool = _pool([_net(1), _net(2), _net(3)], ["runs:/s"] * 3, source)
    states = [m.net.state_dict() for m in pool.members]
    for method, merge in (
        (TaskArithmetic(scales=[0.1, 1 / 3, 1.0], reset_bn=False), lambda s: task_arithmetic(source, states, s)),
        (Ties(scales=[0.5, 1.0], density=0.5, reset_bn=False), lambda s: ties(source, states, s, 0.5)),
    ):
        fused = method.fuse(pool)
        scale = fused.weights["merge/scale"]
        assert fused.weights[f"merge/val_acc_at_{scale:g}"] == max(
            v for k, v in fused.weights.items() if k.startswith("merge/val_acc_at_")
        )
        for key, tensor in merge(scale).items():
            torch.testing.assert_close(fused.state_dict[key], tensor)


def test_merges_refuse_members_of_other_architectures_or_sources():
    source = _net(0).state_dict()
    for method in (TaskArithmetic(), Ties(), FisherMerge()):
        with pytest.raises(FusionError, match="different architecture"):
            method.fuse(_pool([_net(1), _net(2, width=5)], ["runs:/s"] * 2, source))
        with pytest.raises(FusionError, match="another initialisation"):
            method.fuse(_pool([_net(1), _net(2)], ["runs:/s", "runs:/t"], source))


def test_fisher_merge_of_identical_members_is_that_member():
    net = _net(1)
    fused = FisherMerge(images=20, reset_bn=False).fuse(_pool([net, copy.deepcopy(net)], ["runs:/s"] * 2))
    for key, tensor in net.state_dict().items():
        torch.testing.assert_close(fused.state_dict[key], tensor)


def test_a_soup_re_estimates_batchnorm_statistics_only_when_asked():
    pool = _pool([_net(1), _net(2)], ["runs:/s"] * 2)
    kept = UniformSoup(reset_bn=False).fuse(pool).state_dict
    reset = UniformSoup(reset_bn=True).fuse(pool).state_dict
    changed = {k for k in kept if not torch.equal(kept[k], reset[k])}
    assert changed == {"backbone.2.running_mean", "backbone.2.running_var", "backbone.2.num_batches_tracked"}
    with torch.no_grad():  # the statistics of the soup's own activations on the training images
        x = pool.members[0].transform(pool.images["train"], train=False)
        soup = _net(0)
        soup.load_state_dict(reset)
        h = soup.backbone[1](soup.backbone[0](x))
    torch.testing.assert_close(reset["backbone.2.running_mean"], h.mean(0))
