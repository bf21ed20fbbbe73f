"""Fusion maths checked by hand on tiny models: ensembles, stacking, weight fitting and soups."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from transfuse.data.transforms import BatchTransform
from transfuse.errors import FusionError
from transfuse.fusion import (
    Classifier,
    Stacker,
    average_state_dicts,
    check_soup_members,
    fit_weights,
    greedy_soup,
    logit_mean,
    prob_mean,
    vote,
    weighted,
)
from transfuse.fusion.members import Member


def _linear(seed: int, features: int = 5, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, classes), nn.BatchNorm1d(classes))


def test_a_soup_of_one_or_of_identical_models_is_that_model():
    state = _linear(0).state_dict()
    for soup in (average_state_dicts([state]), average_state_dicts([state, state, state])):
        assert soup.keys() == state.keys()
        for key in state:
            torch.testing.assert_close(soup[key], state[key], rtol=0, atol=1e-7)


def test_a_uniform_soup_is_the_element_wise_mean():
    a, b = _linear(0).state_dict(), _linear(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    soup = average_state_dicts([a, b])
    torch.testing.assert_close(soup["0.weight"], (a["0.weight"] + b["0.weight"]) / 2)
    torch.testing.assert_close(soup["0.bias"], (a["0.bias"] + b["0.bias"]) / 2)
    assert soup["0.weight"][0, 0] == pytest.approx(float(a["0.weight"][0, 0] + b["0.weight"][0, 0]) / 2)
    assert soup["1.num_batches_tracked"] == a["1.num_batches_tracked"]  # integer buffers: from the first


def test_greedy_soup_is_never_worse_on_held_out_data_than_its_first_member():
    torch.manual_seed(3)
    x = torch.randn(200, 5)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes
    models = [_linear(seed).eval() for seed in range(6)]
    states = [m.state_dict() for m in models]

    def accuracy(state):
        model = _linear(0).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    held_out = [accuracy(s) for s in states]
    soup, chosen, score = greedy_soup(states, held_out, accuracy)
    assert chosen[0] == max(range(6), key=lambda i: held_out[i])  # starts from the best member
    assert score >= max(held_out)
    assert score == pytest.approx(accuracy(soup))
    assert score == pytest.approx(accuracy(average_state_dicts([states[i] for i in chosen])))


def test_ensembles_of_identical_models_equal_the_model():
    logits = torch.randn(10, 4)
    stacked = torch.stack([logits, logits, logits])
    torch.testing.assert_close(logit_mean(stacked), logits)
    torch.testing.assert_close(prob_mean(stacked), torch.log_softmax(logits, -1))
    assert torch.equal(vote(stacked).argmax(-1), logits.argmax(-1))
    torch.testing.assert_close(weighted(stacked, torch.tensor([0.2, 0.3, 0.5])), torch.log_softmax(logits, -1))


def test_mean_rules_by_hand():
    a = torch.tensor([[2.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(logit_mean(torch.stack([a, b])), torch.tensor([[1.0, 0.5]]))
    pa, pb = torch.softmax(a, -1), torch.softmax(b, -1)
    torch.testing.assert_close(prob_mean(torch.stack([a, b])).exp(), (pa + pb) / 2)


def test_vote_follows_the_majority_and_breaks_ties_by_probability():
    one_hot = torch.eye(3) * 5.0
    # three members on one sample: two say class 0, one says class 1 (very confidently)
    logits = torch.stack([one_hot[[0]], one_hot[[0]], one_hot[[1]] * 10]).float()
    assert vote(logits).argmax(-1).item() == 0
    # a 1-1 tie: the more confident member wins
    tie = torch.stack([torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[0.0, 9.0, 0.0]])])
    assert vote(tie).argmax(-1).item() == 1
    torch.testing.assert_close(vote(tie).exp().sum(-1), torch.ones(1), atol=1e-3, rtol=0)


def test_fitted_weights_recover_the_mixture_that_made_the_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20000, 4, generator=generator) * 3
    truth = torch.tensor([0.7, 0.3])
    mixture = (truth.view(2, 1, 1) * torch.softmax(logits, -1)).sum(0)
    labels = torch.multinomial(mixture, 1, generator=generator).squeeze(1)
    fitted = fit_weights(logits, labels)
    torch.testing.assert_close(fitted, truth, atol=0.03, rtol=0)


def test_stacking_learns_to_trust_the_informative_member():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=generator)
    informative = torch.nn.functional.one_hot(labels, 3).float() * 4 + torch.randn(300, 3, generator=generator)
    noise = torch.randn(300, 3, generator=generator) * 4
    logits = torch.stack([noise, informative])
    stacker = Stacker(C=1.0).fit(logits[:, :200], labels[:200])
    held_out = stacker(logits[:, 200:])
    assert (held_out.argmax(-1) == labels[200:]).float().mean() >= 0.95
    torch.testing.assert_close(held_out.exp().sum(-1), torch.ones(100))
    coef = torch.as_tensor(stacker.model.coef_).abs().view(3, 2, 3).sum(dim=(0, 2))
    assert coef[1] > 3 * coef[0]


def _member(net: nn.Module, source: str, size: int = 8) -> Member:
    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"run{id(net)}", run_name="m"))
    transform = BatchTransform(size, 3, [0.5], [0.5])
    return Member(run, None, net, transform, source)


def _net(width: int) -> Classifier:
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, width)), nn.Linear(width, 3))


def test_soup_members_must_share_architecture_transform_and_initialisation():
    check_soup_members([_member(_net(4), "runs:/a"), _member(_net(4), "runs:/a")])
    with pytest.raises(FusionError, match=r"member 1 .* different architecture \(backbone\.1\.weight"):
        check_soup_members([_member(_net(4), "runs:/a"), _member(_net(5), "runs:/a")])
    with pytest.raises(FusionError, match=r"member 2 .* different input transform"):
        check_soup_members([_member(_net(4), "x"), _member(_net(4), "x"), _member(_net(4), "x", size=16)])
    with pytest.raises(FusionError, match=r"another initialisation \(runs:/b vs member 0's runs:/a\)"):
        check_soup_members([_member(_net(4), "runs:/a"), _member(_net(4), "runs:/b")])
    with pytest.raises(FusionError, match="trained from scratch"):
        check_soup_members([_member(_net(4), ""), _member(_net(4), "")])
    check_soup_members([_member(_net(4), "runs:/a"), _member(_net(4), "runs:/b")], require_shared_init=False)


def test_distillation_loss_by_hand():
    from transfuse.fusion.distill import distillation_loss

    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    assert distillation_loss(teacher, teacher, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    t = 2.0
    p, q = torch.softmax(teacher / t, -1), torch.softmax(student / t, -1)
    expected = t**2 * (p * (p.log() - q.log())).sum(-1).mean()
    assert distillation_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-6)
