"""Weight sources and loading: exact copies, reported keys, refused mismatches, clear errors."""

from __future__ import annotations

import logging

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import save_file

from transfuse import weights
from transfuse.errors import WeightsError
from transfuse.models.build import build_model

CLASSES = ["disk", "square", "triangle", "cross"]


@pytest.fixture
def model_factory(make_config):
    def make(*overrides, classes=CLASSES):
        torch.manual_seed(len(overrides) + len(classes))
        return build_model(make_config("backbone=test_resnet", *overrides), classes)

    return make


def _assert_same(model, state):
    own = model.state_dict()
    for key, tensor in state.items():
        torch.testing.assert_close(own[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_local_files_load_exactly(model_factory, tmp_path, tracking_uri, suffix):
    source = model_factory("seed=1")
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".ckpt":
        torch.save({"state_dict": state, "transfuse": {"class_names": CLASSES}}, path)
    else:
        torch.save(state, path)
    target = model_factory("seed=2")
    checkpoint = weights.resolve(str(path), MlflowClient(tracking_uri), target.backbone)
    report = weights.load_into(target, checkpoint, CLASSES)
    _assert_same(target, state)
    assert report.loaded == len(state) and not report.missing and not report.unexpected
    assert not report.head_reinitialised


def test_plain_timm_state_dict_initialises_the_backbone(model_factory, caplog):
    import timm

    plain = timm.create_model("test_resnet", num_classes=7)  # with its own classifier, as hub files have
    target = model_factory()
    head_before = target.head.fc.weight.clone()
    checkpoint = weights.Checkpoint(plain.state_dict(), "plain.pth")
    with caplog.at_level(logging.WARNING):
        report = weights.load_into(target, checkpoint, CLASSES)
    for key, tensor in plain.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(target.backbone.model.state_dict()[key], tensor, rtol=0, atol=0)
    assert sorted(report.unexpected) == ["backbone.model.fc.bias", "backbone.model.fc.weight"]
    assert report.missing == ["head.fc.weight", "head.fc.bias"]
    torch.testing.assert_close(target.head.fc.weight, head_before)
    assert "unused by the model" in caplog.text


def test_changed_classes_reinitialise_only_the_head(model_factory, caplog):
    source = model_factory(classes=["a", "b", "c"])
    target = model_factory()
    head_before = target.head.fc.weight.clone()
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=["a", "b", "c"])
    with caplog.at_level(logging.WARNING):
        report = weights.load_into(target, checkpoint, CLASSES, on_head_mismatch="reinit")
    assert report.head_reinitialised
    torch.testing.assert_close(target.head.fc.weight, head_before)
    _assert_same(target, {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")})
    assert "re-initialised" in caplog.text


def test_same_shape_but_renamed_classes_also_reinitialise_the_head(model_factory):
    source = model_factory(classes=["w", "x", "y", "z"])
    target = model_factory()
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=["w", "x", "y", "z"])
    assert weights.load_into(target, checkpoint, CLASSES).head_reinitialised


def test_fresh_head_keeps_a_new_classifier_although_the_classes_match(model_factory):
    source = model_factory("seed=1")  # another torch seed than the targets
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=CLASSES)
    kept = model_factory()
    assert not weights.load_into(kept, checkpoint, CLASSES).head_reinitialised
    torch.testing.assert_close(kept.head.fc.weight, source.head.fc.weight)  # by default the source head is kept
    fresh = model_factory()
    head_before = fresh.head.fc.weight.clone()
    assert weights.load_into(fresh, checkpoint, CLASSES, fresh_head=True).head_reinitialised
    torch.testing.assert_close(fresh.head.fc.weight, head_before)
    assert not torch.equal(fresh.head.fc.weight, source.head.fc.weight)
    _assert_same(fresh, {k: v for k, v in source.state_dict().items() if k.startswith("backbone.")})
    with pytest.raises(WeightsError, match="only a stage that trains"):
        weights.load_into(model_factory(), checkpoint, CLASSES, on_head_mismatch="error", fresh_head=True)


def test_copy_blocks_takes_only_the_first_blocks_of_the_source(model_factory):

    source = model_factory("seed=1")
    target = model_factory()
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=CLASSES)
    weights.load_into(target, checkpoint, CLASSES, fresh_head=True)
    reset = set(weights.reset_above(target, fresh, 2))
    blocks = target.backbone_blocks()
    own, theirs = target.state_dict(), source.state_dict()
    for names, _ in blocks[:2]:  # stem and first stage: the source's
        assert all(torch.equal(own[n], theirs[n]) for n in names) and not reset & set(names)
    for names, modules in blocks[2:]:  # the rest, buffers included: as freshly built
        buffers = [k for k in own if any(k.startswith(f"{m}.") for m in modules) and "running_mean" in k]
        assert buffers and all(torch.equal(own[k], fresh[k]) for k in [*names, *buffers])
    assert torch.equal(target.head.fc.weight, fresh["head.fc.weight"])
    with pytest.raises(WeightsError, match=f"the backbone has {len(blocks)} blocks"):
        weights.reset_above(target, fresh, len(blocks) + 1)


def test_evaluation_refuses_a_head_for_other_classes(model_factory):
    source = model_factory(classes=["a", "b", "c"])
    checkpoint = weights.Checkpoint(source.state_dict(), "src.ckpt", class_names=["a", "b", "c"])
    with pytest.raises(WeightsError, match=r"trained on classes \['a', 'b', 'c'\]"):
        weights.load_into(model_factory(), checkpoint, CLASSES, on_head_mismatch="error")


def test_backbone_shape_mismatch_is_refused_naming_the_tensor(model_factory):
    grey = model_factory("backbone.in_chans=1")
    with pytest.raises(WeightsError, match=r"backbone\.model\.conv1\.0\.weight: checkpoint \(\d+, 1, 3, 3\)"):
        weights.load_into(model_factory(), weights.Checkpoint(grey.state_dict(), "grey.pth"), CLASSES)


def test_checkpoint_of_another_architecture_is_refused(model_factory):
    vit = model_factory("backbone=test_vit")
    with pytest.raises(WeightsError, match="shares no backbone tensor"):
        weights.load_into(model_factory(), weights.Checkpoint(vit.state_dict(), "vit.pth"), CLASSES)


def test_missing_tensors_are_reported(model_factory):
    source = model_factory()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("backbone.model.fc")}
    state.pop("backbone.model.conv1.0.weight")
    report = weights.load_into(model_factory(), weights.Checkpoint(state, "partial.pth", CLASSES), CLASSES)
    assert report.missing == ["backbone.model.conv1.0.weight"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("does/not/exist.ckpt", "does not exist"),
        ("resnet18-pretrained", "cannot read init.weights"),
        ("runs:/deadbeef", "no MLflow run with id 'deadbeef'"),
        ("tags.stage = pretrain", "invalid run query"),
        ("tags.stage = 'pretrain'", "no FINISHED run matches"),
    ],
)
def test_bad_sources_fail_clearly(model_factory, tracking_uri, spec, message):
    client = MlflowClient(tracking_uri)
    with pytest.raises(WeightsError, match=message):
        weights.resolve(spec, client, model_factory().backbone)


def test_timm_hub_weights_offline_fail_clearly(model_factory, tracking_uri, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = MlflowClient(tracking_uri)
    with pytest.raises(WeightsError, match="cannot fetch timm weights for 'test_resnet'"):
        weights.resolve("timm", client, model_factory().backbone)


def test_none_means_no_weights(model_factory, tracking_uri):
    client = MlflowClient(tracking_uri)
    assert weights.resolve("none", client, model_factory().backbone) is None
    assert weights.resolve(None, client, model_factory().backbone) is None


def test_class_map_copies_the_rows_of_mapped_classes(model_factory):
    source = model_factory(classes=["a", "b", "c"])
    target = model_factory(classes=["b", "x", "a"])
    fresh = target.head.fc.weight.clone()
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=["a", "b", "c"])
    report = weights.load_into(target, checkpoint, ["b", "x", "a"], class_map={"b": "b", "a": "a"})
    assert report.head_reinitialised
    torch.testing.assert_close(target.head.fc.weight[0], source.head.fc.weight[1], rtol=0, atol=0)
    torch.testing.assert_close(target.head.fc.weight[2], source.head.fc.weight[0], rtol=0, atol=0)
    torch.testing.assert_close(target.head.fc.bias[2], source.head.fc.bias[0], rtol=0, atol=0)
    torch.testing.assert_close(target.head.fc.weight[1], fresh[1], rtol=0, atol=0)  # unmapped: fresh


@pytest.mark.parametrize(
    ("class_map", "message"), [({"zz": "a"}, r"target \['zz'\]"), ({"b": "qq"}, r"source \['qq'\]")]
)
def test_class_map_naming_an_unknown_class_is_refused(model_factory, class_map, message):
    source = model_factory(classes=["a", "b", "c"])
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=["a", "b", "c"])
    with pytest.raises(WeightsError, match=message):
        weights.load_into(model_factory(classes=["b", "x", "a"]), checkpoint, ["b", "x", "a"], class_map=class_map)


def test_mlp_head_keeps_its_hidden_layer_when_classes_change(model_factory):
    source = model_factory("head=mlp", classes=["a", "b", "c"])
    target = model_factory("head=mlp")
    checkpoint = weights.Checkpoint(source.state_dict(), "src", class_names=["a", "b", "c"])
    weights.load_into(target, checkpoint, CLASSES)
    torch.testing.assert_close(target.head.hidden[0].weight, source.head.hidden[0].weight, rtol=0, atol=0)
