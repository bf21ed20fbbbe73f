"""Multi-task merging: one member per task, one merged backbone with each task's own head.

Checked by hand on tiny networks (what is merged, what is kept, how a score averages over tasks), then end to end
through ``transfuse-fuse tasks=[...]`` on members trained in the test and read back from MLflow.
"""

from __future__ import annotations

import itertools
import types

import pytest
import torch
from mlflow import MlflowClient
from torch import nn

from tests.conftest import FAST, compose_config, last_line, run_cli
from transfuse.config import compose_config as compose_named
from transfuse.data.transforms import BatchTransform
from transfuse.errors import ConfigError, FusionError
from transfuse.fuse import fuse
from transfuse.fusion.evaluate import task_metrics
from transfuse.fusion.members import Classifier, Member
from transfuse.fusion.methods import FisherMerge, GreedySoup, Individual, TaskArithmetic, UniformSoup
from transfuse.fusion.soups import average_state_dicts
from transfuse.fusion.tasks import TaskPool, match_members
from transfuse.train import train
from transfuse.weights.sources import read_checkpoint


def _member(net: nn.Module, source: str = "runs:/s") -> Member:
    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id=f"run{id(net)}", run_name="m"))
    return Member(run, None, net.eval(), BatchTransform(2, 3, [0.5], [0.5]), source)


def _net(seed: int, classes: int = 3) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4)), nn.Linear(4, classes))


class _Data:
    """A datamodule stand-in: random uint8 images and labels per split."""

    def __init__(self, seed: int, classes: int, sizes: tuple[int, int, int] = (40, 30, 20)) -> None:
        g = torch.Generator().manual_seed(seed)
        self.class_names = [f"c{i}" for i in range(classes)]
        self.splits = {
            split: types.SimpleNamespace(
                images=torch.randint(0, 256, (n, 3, 2, 2), dtype=torch.uint8, generator=g),
                labels=torch.randint(0, classes, (n,), generator=g),
            )
            for split, n in zip(("train", "val", "test"), sizes, strict=True)
        }


def _pool(source: dict | None = None) -> TaskPool:
    """Two tasks of 3 and 5 classes: their heads differ in shape, their backbones share one architecture."""
    members = [_member(_net(1, 3)), _member(_net(2, 5))]
    return TaskPool.predict(["a", "b"], members, [_Data(10, 3), _Data(11, 5)], source)


def test_a_merge_averages_the_backbones_and_keeps_each_task_head():
    pool = _pool()
    fused = UniformSoup(reset_bn=False).fuse(pool)
    backbones = [{k: v for k, v in m.net.state_dict().items() if k.startswith("backbone.")} for m in pool.members]
    average = average_state_dicts(backbones)
    for t, task in enumerate(pool.tasks):
        state = fused.task_states[task.name]
        for key, tensor in average.items():
            torch.testing.assert_close(state[key], tensor)
        for key, tensor in pool.members[t].net.state_dict().items():
            if key.startswith("head."):
                assert torch.equal(state[key], tensor), key
        # task t's logits are its own head on the averaged backbone, on its own images
        net = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4)), nn.Linear(4, 3 + 2 * t))
        net.load_state_dict(state)
        with torch.no_grad():
            expected = net.eval()(pool.members[t].transform(task.images["test"], train=False))
        torch.testing.assert_close(fused.logits[f"{task.name}/test"], expected)


def test_a_score_is_the_mean_of_each_task_accuracy_and_metrics_say_so():
    pool = _pool()
    fused = UniformSoup(reset_bn=False).fuse(pool)
    metrics = task_metrics(fused, pool, latency_batches=[1], repeats=1)
    per_task = []
    for i, task in enumerate(pool.tasks):
        hand = float((fused.logits[f"{task.name}/test"].argmax(-1) == task.labels["test"]).float().mean())
        assert metrics[f"test/{task.name}/acc"] == pytest.approx(hand)
        own = float((task.logits["test"].argmax(-1) == task.labels["test"]).float().mean())
        assert metrics[f"member/{i}/test/acc"] == pytest.approx(own)
        per_task.append((hand, own))
    assert metrics["test/acc"] == pytest.approx(sum(h for h, _ in per_task) / 2)
    assert metrics["test/normalized_acc"] == pytest.approx(sum(h / o for h, o in per_task) / 2)
    assert metrics["members/mean/test/acc"] == pytest.approx(sum(o for _, o in per_task) / 2)
    assert metrics["cost/params"] == sum(p.numel() for p in pool.members[0].net.backbone.parameters()) + sum(
        p.numel() for m in pool.members for p in m.net.head.parameters()
    )
    model = pool.soup(average_state_dicts(pool.states()), reset_bn=False)
    assert pool.score(model, "test") == pytest.approx(metrics["test/acc"])


def test_individual_is_each_task_with_its_own_member():
    pool = _pool()
    fused = Individual().fuse(pool)
    for task in pool.tasks:
        assert torch.equal(fused.logits[f"{task.name}/test"], task.member.predict(task.images["test"]))
    metrics = task_metrics(fused, pool, latency_batches=[1], repeats=1)
    assert metrics["test/normalized_acc"] == pytest.approx(1.0)
    assert metrics["cost/params"] == sum(p.numel() for m in pool.members for p in m.net.parameters())


def test_task_arithmetic_merges_backbones_from_the_source_and_reset_bn_uses_every_task():
    source = _net(0).state_dict()
    pool = _pool({k: v for k, v in source.items() if k.startswith("backbone.")})
    fused = TaskArithmetic(scales=[0.5], reset_bn=True).fuse(pool)
    state = fused.task_states["a"]
    for key in ("backbone.1.weight", "backbone.1.bias"):
        expected = source[key] + 0.5 * sum(m.net.state_dict()[key] - source[key] for m in pool.members)
        torch.testing.assert_close(state[key], expected)
    # one set of BatchNorm statistics, estimated on the training images of both tasks together
    net = _net(0)
    net.load_state_dict(state)
    with torch.no_grad():
        x = torch.cat([t.member.transform(t.images["train"], train=False) for t in pool.tasks])
        hidden = net.backbone[1](net.backbone[0](x))
    torch.testing.assert_close(state["backbone.2.running_mean"], hidden.mean(0))
    assert torch.equal(fused.task_states["b"]["backbone.2.running_mean"], state["backbone.2.running_mean"])


def test_a_greedy_soup_of_tasks_starts_from_the_member_best_on_all_tasks_and_never_scores_below_it():
    pool = TaskPool.predict(["a", "b", "c"], [_member(_net(s, 3)) for s in (1, 2, 3)], [_Data(s, 3) for s in (4, 5, 6)])
    singles = pool.member_accuracy("val")
    for i, member in enumerate(pool.members):  # member i's backbone with every task's head, as a score sees it
        hand = [
            t.accuracy(
                Classifier(member.net.backbone, t.member.net.head).eval()(
                    member.transform(t.images["val"], train=False)
                ),
                "val",
            )
            for t in pool.tasks
        ]
        assert singles[i] == pytest.approx(sum(hand) / 3)
    fused = GreedySoup(reset_bn=False).fuse(pool)
    used = [i for i in range(3) if fused.weights[f"weight/{i}"] > 0]
    assert max(range(3), key=lambda i: singles[i]) in used
    chosen = pool.soup(average_state_dicts([pool.states()[i] for i in used]), reset_bn=False)
    assert pool.score(chosen) >= max(singles)


def test_backbones_must_share_an_architecture_but_heads_need_not():
    UniformSoup().check(_pool())  # heads of 3 and 5 classes: each task keeps its own
    wide = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6)), nn.Linear(6, 3))
    pool = TaskPool.predict(["a", "b"], [_member(_net(1)), _member(wide)], [_Data(10, 3), _Data(11, 3)])
    for method in (UniformSoup(), TaskArithmetic(), FisherMerge()):
        with pytest.raises(FusionError, match=r"member 1 .* cannot join .* different architecture"):
            method.check(pool)


def test_fisher_uses_each_member_own_task_images():
    pool = _pool()
    inputs, labels = pool.fisher_inputs(1, 7, true_labels=True)
    task = pool.tasks[1]
    torch.testing.assert_close(torch.cat(inputs), task.member.transform(task.images["train"][:7], train=False))
    assert torch.equal(torch.cat(labels), task.labels["train"][:7])
    fused = FisherMerge(images=8, reset_bn=False).fuse(pool)
    assert set(fused.task_states) == {"a", "b"}


def _run(run_id: str, digests: list[str]) -> types.SimpleNamespace:
    tags = [types.SimpleNamespace(key="mlflow.data.context", value="train")]
    inputs = [types.SimpleNamespace(dataset=types.SimpleNamespace(digest=d), tags=tags) for d in digests]
    return types.SimpleNamespace(
        info=types.SimpleNamespace(run_id=run_id, run_name=f"m-{run_id}"),
        inputs=types.SimpleNamespace(dataset_inputs=inputs),
    )


def test_members_are_matched_to_tasks_by_the_digest_of_their_training_data():
    a, b, c = _run("ra", ["d1"]), _run("rb", ["d2"]), _run("rc", ["d1"])
    assert [r.info.run_id for r in match_members(["x", "y"], ["d2", "d1"], [a, b])] == ["rb", "ra"]
    with pytest.raises(FusionError, match=r"task y \(data digest d3\) has no member.*m-ra \(ra, trained on d1\)"):
        match_members(["x", "y"], ["d1", "d3"], [a, b])
    with pytest.raises(FusionError, match=r"task x .* has 2 members"):
        match_members(["x", "y"], ["d1", "d2"], [a, b, c])
    with pytest.raises(FusionError, match=r"member m-rb .* belongs to none of the tasks"):
        match_members(["x"], ["d1"], [a, b])


# --- end to end: a source, a fine-tune on each of two tasks, transfuse-fuse tasks=[...] --------------------------
TASKS = "tasks=[synthetic,synthetic_target]"
SYNTHETIC = "{name: synthetic, per_class: 24}"  # as the members' FAST config builds it


@pytest.fixture(scope="module")
def task_zoo(module_dir):
    root = module_dir
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    counter = itertools.count()

    def run(*overrides):
        cfg = compose_config(
            [*FAST, f"logger.tracking_uri={uri}", "logger.experiment_name=zoo", *overrides], root / f"r{next(counter)}"
        )
        train(cfg)
        experiment = client.get_experiment_by_name("zoo").experiment_id
        return client.search_runs([experiment], order_by=["attributes.start_time DESC"])[0]

    source = run()
    init = f"init.weights=runs:/{source.info.run_id}"
    members = [
        run("stage=finetune", init, f"data={data}", "+tags.role=member") for data in ("synthetic", "synthetic_target")
    ]
    return root, uri, source, members


def _merge(task_zoo, *overrides):
    root, uri, _, _ = task_zoo
    pool = "pool.filter=\"tags.role = 'member'\""
    args = ["backbone=test_resnet", "cost.latency_batches=[1,8]", f"logger.tracking_uri={uri}"]
    cfg = compose_named(
        "fuse", [*args, "logger.experiment_name=merged", pool, "pool.experiments=[zoo]", *overrides], root / "m"
    )
    return cfg, fuse(cfg)


def test_merging_two_tasks_end_to_end_reads_back_from_mlflow(task_zoo):
    _, uri, _, members = task_zoo
    tasks = f"tasks=[{SYNTHETIC},{{name: synthetic_target, per_class: 24}}]"
    _merge(
        task_zoo, tasks, "fusion_method=[individual,task_arithmetic]", "fusion_method.task_arithmetic.scales=[0.5,1.0]"
    )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("merged").experiment_id
    runs = {r.data.tags["method"]: r for r in client.search_runs([experiment])}
    assert set(runs) == {"individual", "task_arithmetic"}
    individual, merged = runs["individual"], runs["task_arithmetic"]
    assert individual.data.tags["data"] == "synthetic+synthetic_target"
    for i, (member, task) in enumerate(zip(members, ("synthetic", "synthetic_target"), strict=True)):
        # each task's own member scores what its training run logged on the same test split
        own = member.data.metrics["test/acc"]
        assert individual.data.metrics[f"test/{task}/acc"] == pytest.approx(own, abs=1e-6)
        assert merged.data.metrics[f"member/{i}/test/acc"] == pytest.approx(own, abs=1e-6)
    assert merged.data.metrics["merge/scale"] in (0.5, 1.0)
    tasks_acc = [merged.data.metrics[f"test/{t}/acc"] for t in ("synthetic", "synthetic_target")]
    assert merged.data.metrics["test/acc"] == pytest.approx(sum(tasks_acc) / 2)
    # every task's data is an eval input with the digest its member trained on
    digests = {i.dataset.name: i.dataset.digest for i in merged.inputs.dataset_inputs}
    for member, task in zip(members, ("synthetic", "synthetic_target"), strict=True):
        trained = [i.dataset.digest for i in member.inputs.dataset_inputs if i.tags[0].value == "train"]
        assert digests[task] == trained[0]
    # each task's network is saved: one merged backbone, each member's own head
    states = {}
    for task in ("synthetic", "synthetic_target"):
        path = client.download_artifacts(merged.info.run_id, f"checkpoints/{task}.ckpt", str(task_zoo[0]))
        states[task] = read_checkpoint(path, task)[0]
    backbone = [k for k in states["synthetic"] if k.startswith("backbone.")]
    assert backbone and all(torch.equal(states["synthetic"][k], states["synthetic_target"][k]) for k in backbone)
    assert not torch.equal(states["synthetic"]["head.fc.weight"], states["synthetic_target"]["head.fc.weight"])


def test_a_task_built_otherwise_than_its_member_and_one_dataset_methods_are_refused_before_any_run(task_zoo):
    _, uri, _, _ = task_zoo
    with pytest.raises(FusionError, match=r"task synthetic_target .* has no member"):
        _merge(task_zoo, f"tasks=[{SYNTHETIC},{{name: synthetic_target, per_class: 12}}]", "fusion_method=uniform_soup")
    with pytest.raises(ConfigError, match=r"tasks: synthetic sets per_clas, which .* \(did you mean per_class\?\)"):
        _merge(task_zoo, "tasks=[{name: synthetic, per_clas: 24},synthetic_target]", "fusion_method=uniform_soup")
    with pytest.raises(ConfigError, match="fusion_method=logit_mean fuses members of one dataset"):
        _merge(task_zoo, TASKS, "fusion_method=logit_mean")
    with pytest.raises(ConfigError, match="individual scores each task's own member"):
        _merge(task_zoo, "fusion_method=individual")
    experiment = MlflowClient(uri).get_experiment_by_name("merged")
    if experiment is not None:  # the end-to-end test may have run first: nothing of these calls is there
        runs = MlflowClient(uri).search_runs([experiment.experiment_id])
        assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow  # a subprocess that imports everything: about 10 s; the in-process test checks the message
def test_cli_says_in_one_line_when_a_task_has_no_member(task_zoo, tmp_path):
    _, uri, _, _ = task_zoo
    args = [
        f"logger.tracking_uri={uri}",
        "backbone=test_resnet",
        "pool.experiments=[zoo]",
        "pool.filter=\"tags.role = 'member'\"",
        "tasks=[synthetic,digits]",
        "fusion_method=uniform_soup",
    ]
    result = run_cli("transfuse.fuse", args, tmp_path)
    assert result.returncode == 1
    assert last_line(result.stderr).startswith("transfuse-fuse: error: task synthetic (data digest")
