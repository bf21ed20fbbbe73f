"""data=mix: sources fused in one label space, checked image by image (content hashes) against the sources."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import FAST, last_line, run_cli
from transfuse.data.mix import MixedDomains, preset_config, source_specs
from transfuse.errors import ConfigError, DataError

#: synthetic and synthetic_target draw 32x32 RGB images: at this size the mix keeps their pixels as they are
KW = {
    "image_size": 32,
    "channels": 3,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.25, 0.25, 0.25),
    "backbone_name": "test_resnet",
}
SHAPES = ["synthetic", {"name": "tgt", "preset": "synthetic_target", "num_classes": 3, "per_class": 20}]


def _hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha1(bytes(row)).hexdigest() for row in images.flatten(1).numpy()]


def _labelled(images: torch.Tensor, labels: list[str]) -> Counter:
    """(image hash, class name) pairs, counted."""
    return Counter(zip(_hashes(images), labels, strict=True))


def _folder(root: Path, classes: list[str], count: int = 6) -> Path:
    """``root/<class>/<i>.png`` of 32x32 images, each one distinct."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 32), (40 * c + 7, 30 * i, 200)).save(root / name / f"{i}.png")
    return root


def test_sources_are_names_items_or_a_mapping():
    specs = source_specs(["mnist5k", {"name": "few", "preset": "digits", "train_per_class": 5}])
    assert [(s.name, s.preset, s.overrides) for s in specs] == [
        ("mnist5k", "mnist5k", {}),
        ("few", "digits", {"train_per_class": 5}),
    ]
    assert [s.preset for s in source_specs({"digits": None, "mnist5k": {"val_per_class": 2}})] == ["digits", "mnist5k"]
    with pytest.raises(ConfigError, match="at least two"):
        source_specs(["digits"])
    with pytest.raises(ConfigError, match="must differ"):
        source_specs(["digits", "digits"])


def test_preset_config_applies_the_defaults_like_hydra():
    cfg = preset_config("synthetic_target")  # synthetic_target -> synthetic -> _base, augment: none
    assert cfg._target_ == "transfuse.data.SyntheticShapes" and cfg.seed == 1 and cfg.augment is None
    assert cfg.batch_size == 32 and cfg.style.noise == 0.08 and cfg.val_fraction == 0.15
    assert preset_config("mnist5k").augment.degrees == 10


def test_label_mapping_matches_every_source_class_by_class():
    union = MixedDomains(SHAPES, labels="union", **KW)
    shared = MixedDomains(SHAPES, labels="intersection", **KW)
    assert union.class_names == ["disk", "square", "triangle", "cross"]
    assert shared.class_names == ["disk", "square", "triangle"]
    for mix in (union, shared):
        for d, (name, source) in enumerate(mix.source_modules.items()):
            for split in ("train", "val", "test"):
                part, pooled = source.splits[split], mix.splits[split]
                kept = [source.class_names[i] for i in part.labels.tolist()]
                keep = torch.tensor([c in mix.class_names for c in kept], dtype=torch.bool)
                expected = _labelled(part.images[keep], [c for c in kept if c in mix.class_names])
                mine = pooled.domains == d
                got = _labelled(pooled.images[mine], [mix.class_names[i] for i in pooled.labels[mine].tolist()])
                assert got == expected, f"{name} {split}"
    assert (shared.splits["train"].labels < 3).all() and len(shared.splits["train"]) < len(union.splits["train"])


def test_mapping_across_class_orders(tmp_path):
    folder = _folder(tmp_path / "folder", ["zebra", "square"])
    sources = [SHAPES[0], {"name": "folder", "preset": "image_folder", "root": str(folder), "load_size": 32}]
    mix = MixedDomains(sources, **KW)
    assert mix.class_names == ["disk", "square", "triangle", "cross", "zebra"]
    source = mix.source_modules["folder"]
    assert source.class_names == ["square", "zebra"]
    for split in ("train", "val", "test"):
        part, pooled = source.splits[split], mix.splits[split]
        mine = pooled.domains == 1
        expected = _labelled(part.images, [source.class_names[i] for i in part.labels.tolist()])
        assert _labelled(pooled.images[mine], [mix.class_names[i] for i in pooled.labels[mine].tolist()]) == expected


def test_sources_are_brought_to_one_size_and_channels():
    mix = MixedDomains(["mnist5k", {"name": "digits", "train_per_class": 4}], **{**KW, "image_size": 16})
    for split in ("train", "val", "test"):
        assert mix.splits[split].images.shape[1:] == (3, 16, 16)
    assert torch.bincount(mix.splits["train"].labels[mix.splits["train"].domains == 1]).tolist() == [4] * 10
    assert mix.run_tags() == {"data.sources": "mnist5k,digits", "data.labels": "union", "data.sampling": "proportional"}


def test_leave_one_out_never_trains_on_the_held_out_source():
    mix = MixedDomains(SHAPES, test_source="tgt", **KW)
    _ = mix.splits
    held = mix.source_modules["tgt"]
    held_out = set().union(*(_hashes(held.splits[s].images) for s in ("train", "val", "test")))
    seen = set(_hashes(mix.splits["train"].images)) | set(_hashes(mix.splits["val"].images))
    for images, *_ in mix.train_dataloader():
        seen |= set(_hashes(images))
    assert seen and not seen & held_out
    assert Counter(_hashes(mix.splits["test"].images)) == Counter(_hashes(held.splits["test"].images))
    assert (mix.splits["test"].domains == 1).all() and (mix.splits["train"].domains == 0).all()
    assert mix.run_tags()["data.test_source"] == "tgt"


def test_sampling_weights_draw_from_the_sources_as_asked():
    mix = MixedDomains(SHAPES, sampling=[1.0, 0.0], **KW)
    _ = mix.splits
    first = set(_hashes(mix.source_modules["synthetic"].splits["train"].images))
    drawn = [h for images, _ in mix.train_dataloader() for h in _hashes(images)]
    assert len(drawn) == len(mix.splits["train"]) and set(drawn) <= first
    torch.manual_seed(0)
    balanced = MixedDomains(SHAPES, sampling="balanced", **KW)
    domains = balanced.splits["train"].domains
    lookup = dict(zip(_hashes(balanced.splits["train"].images), domains.tolist(), strict=True))
    counts = Counter(lookup[h] for images, _ in balanced.train_dataloader() for h in _hashes(images))
    assert counts[1] / (counts[0] + counts[1]) == pytest.approx(0.5, abs=0.08)  # though tgt has 3/7 of the images


def test_evaluation_batches_carry_the_source_index():
    mix = MixedDomains(SHAPES, **KW)
    images, labels, domains = next(iter(mix.test_dataloader()))
    assert len(images) == len(labels) == len(domains) and set(domains.tolist()) <= {0, 1}
    assert mix.domain_names == ["synthetic", "tgt"]


@pytest.mark.parametrize(
    ("sources", "options", "error", "message"),
    [
        (["mnist5k", "nonesuch"], {}, ConfigError, "unknown data preset 'nonesuch' in data.sources; choose from"),
        (SHAPES, {"test_source": "mnist5k"}, ConfigError, r"data.test_source=mnist5k is not among data.sources"),
        (SHAPES, {"labels": "both"}, ConfigError, "data.labels must be one of"),
        (SHAPES, {"sampling": [1.0]}, ConfigError, "data.sampling needs 2 weights"),
        (
            ["digits", {"name": "s", "preset": "synthetic", "style": {"nois": 0.1}}],
            {},
            ConfigError,
            r"data.sources: s sets style.nois, which preset synthetic has not \(did you mean style.noise\?\)",
        ),
    ],
)
def test_bad_mixes_are_refused_at_construction(sources, options, error, message):
    with pytest.raises(error, match=message):
        MixedDomains(sources, **options, **KW)


def test_sources_without_a_shared_class_are_refused_naming_them():
    with pytest.raises(DataError, match=r"data\.sources share no class under data\.labels=intersection") as info:
        _ = MixedDomains(["synthetic", "digits"], labels="intersection", **KW).splits
    assert "synthetic: disk, square" in str(info.value) and "digits: 0, 1" in str(info.value)


@pytest.mark.slow
def test_per_source_metrics_add_up_to_the_pooled_ones_and_sources_are_tags(make_config):
    from transfuse.train import train

    sources = "data.sources=[{name: synthetic, per_class: 25},{name: tgt, preset: synthetic_target, num_classes: 3}]"
    fast = [o for o in FAST if not o.startswith("data")]
    cfg = make_config(*fast, "data=mix", sources, "data.sampling=balanced")
    train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    m, tags = run.data.metrics, run.data.tags
    assert tags["data.sources"] == "synthetic,tgt" and tags["data.sampling"] == "balanced"
    for split in ("test", "test_last"):
        counts = [m[f"{split}/{s}/images"] for s in ("synthetic", "tgt")]
        assert sum(counts) == m[f"{split}/images"] == 4 * 6 + 3 * 25  # test_fraction 0.25 of 25 and 100 per class
        correct = sum(m[f"{split}/{s}/acc"] * n for s, n in zip(("synthetic", "tgt"), counts, strict=True))
        assert correct / sum(counts) == pytest.approx(m[f"{split}/acc"], abs=1e-5)
    assert {"val/synthetic/acc", "val/tgt/acc", "val/acc"} <= set(m)


@pytest.mark.slow
def test_bad_inputs_fail_in_one_line_and_leave_no_run(tmp_path, tracking_uri):
    """Each bad input is one ``transfuse-train: error:`` line naming it, before any MLflow run opens."""
    empty = tmp_path / "photos"
    empty.mkdir()
    (empty / "x.jpg").write_bytes(b"not an image")
    small = ["backbone=test_resnet", "trainer.max_epochs=1", f"logger.tracking_uri={tracking_uri}"]
    cases = {
        "data.sources share no class under data.labels=intersection": [
            "data=mix",
            "data.sources=[synthetic,digits]",
            "data.labels=intersection",
        ],
        "unknown data preset 'mnist' in data.sources": ["data=mix", "data.sources=[mnist,digits]"],
        "data.test_source=svhn is not among data.sources ['mnist5k', 'digits']": ["data=mix", "data.test_source=svhn"],
        f"data.photos={empty} holds no readable image": ["data=mnist_m", f"data.photos={empty}"],
    }
    for expected, args in cases.items():
        result = run_cli("transfuse.train", [*small, *args], tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        line = last_line(result.stderr)
        assert line.startswith("transfuse-train: error: ") and expected in line, line
    client = MlflowClient(tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
