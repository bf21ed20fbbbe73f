"""Multi-input data and models: views, noisy MNIST, fusion heads for 1-3 views, early/feature/late fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from transfuse.data.multiview import NoisyMNIST, edges, make_views
from transfuse.errors import ConfigError
from transfuse.models import (
    AttentionHead,
    BilinearHead,
    ConcatHead,
    EarlyFusion,
    GatedHead,
    LateHead,
    SumHead,
    ViewBranches,
)
from transfuse.train import train

HEADS = [ConcatHead, SumHead, GatedHead, AttentionHead, BilinearHead, LateHead]


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("head_class", HEADS)
def test_every_fusion_head_gives_logits_and_trains_a_step(head_class, views):
    torch.manual_seed(0)
    head = head_class(in_features=16, num_classes=5, views=views)
    features = torch.randn(8, views, 16)
    logits = head(features)
    assert logits.shape == (8, 5)
    if views == 1:  # a single view may also come without the view axis
        torch.testing.assert_close(head(features[:, 0]), logits)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(8) % 5)
    loss.backward()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    optimizer.step()
    changed = [k for k, v in head.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("fc") for k in changed)


def test_gated_weights_are_a_distribution_over_views():
    head = GatedHead(16, 3, views=3)
    head(torch.randn(4, 3, 16))
    torch.testing.assert_close(head.last_weights.sum(-1), torch.ones(4))


def test_shared_branches_see_identical_views_identically_and_separate_ones_do_not():
    torch.manual_seed(0)
    image = torch.randn(2, 1, 3, 32, 32)
    views = image.expand(-1, 2, -1, -1, -1)
    shared = ViewBranches(2, shared=True, name="test_resnet", image_size=32).eval()
    separate = ViewBranches(2, shared=False, name="test_resnet", image_size=32).eval()
    assert len(shared.branches) == 1 and len(separate.branches) == 2
    out_shared, out_separate = shared(views), separate(views)
    assert out_shared.shape == out_separate.shape == (2, 2, shared.num_features)
    torch.testing.assert_close(out_shared[:, 0], out_shared[:, 1])
    assert not torch.allclose(out_separate[:, 0], out_separate[:, 1])
    with pytest.raises(ConfigError, match="2 branches but the batch has 3 views"):
        shared(torch.randn(2, 3, 3, 32, 32))


def test_early_fusion_stacks_views_as_channels():
    model = EarlyFusion(views=3, in_chans=1, name="test_resnet", image_size=32).eval()
    assert model.in_chans == 3
    x = torch.randn(2, 3, 1, 32, 32)
    torch.testing.assert_close(model(x), model(x.flatten(1, 2)))


def test_views_by_hand():
    image = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    image[..., 3:] = 200  # a vertical step
    views = make_views(image, ["identity", "invert", "hflip", "edges"])
    assert views.shape == (1, 4, 1, 6, 6)
    assert torch.equal(views[:, 0], image) and torch.equal(views[:, 1], 255 - image)
    assert torch.equal(views[:, 2], image.flip(-1))
    # Sobel by hand: zero padding, |(gx, gy)| per pixel, scaled so the strongest edge is 255
    padded = torch.nn.functional.pad(image[0, 0].float(), (1, 1, 1, 1))
    kx = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    expected = torch.zeros(6, 6)
    for r in range(6):
        for c in range(6):
            gx = sum(kx[i][j] * padded[r + i, c + j] for i in range(3) for j in range(3))
            gy = sum(kx[j][i] * padded[r + i, c + j] for i in range(3) for j in range(3))
            expected[r, c] = (gx**2 + gy**2) ** 0.5
    expected = (expected * 255 / expected.max()).round()
    assert torch.equal(edges(image)[0, 0].float(), expected)
    assert expected[2, 0] == 0 and expected[2, 2] > 0  # flat away from the step, an edge beside it
    with pytest.raises(ConfigError, match="unknown or no views"):
        make_views(image, ["sepia"])


def _noisy(**kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    data = NoisyMNIST(image_size=28, channels=1, mean=[0.5], std=[0.5], **kwargs)
    split = data.load()[0]["train"]
    return split.images, split.labels


def test_noisy_mnist_pairs_another_image_of_the_same_class_deterministically():
    images, labels = _noisy(max_degrees=0.0, noise=0.0, seed=3)
    assert images.shape == (5000, 2, 1, 28, 28)
    first, second = images[:, 0], images[:, 1]
    originals = {bytes(img.numpy().tobytes()): int(label) for img, label in zip(first, labels, strict=True)}
    # without rotation and noise, view 1 is the digit and view 2 is another image of its class
    assert all(originals[bytes(img.numpy().tobytes())] == int(label) for img, label in zip(second, labels, strict=True))
    assert (first != second).flatten(1).any(1).float().mean() > 0.99
    again, _ = _noisy(max_degrees=0.0, noise=0.0, seed=3)
    assert torch.equal(images, again)
    noisy, _ = _noisy(seed=3)
    assert not torch.equal(noisy[:, 0], first) and (noisy[:, 1].int() >= images[:, 1].int()).all()


@pytest.mark.parametrize("fusion", ["early", "feature", "late"])
def test_a_multi_view_fit_is_tracked(make_config, fusion):
    overrides = [
        "data=multiview",
        "data.source._target_=transfuse.data.UCIDigits",
        "backbone=test_resnet",
        f"multi_input={fusion}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.enable_progress_bar=false",
    ]
    cfg = make_config(*overrides)
    metrics = train(cfg)
    client = MlflowClient(cfg.logger.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["multi_input"] == fusion
    assert metrics["test/acc"] == pytest.approx(run.data.metrics["test/acc"])


def _paired_roots(tmp_path, views=2, per_class=4, drop=None):
    from PIL import Image

    roots = []
    for v in range(views):
        root = tmp_path / f"view{v}"
        for c in ("cat", "dog"):
            (root / c).mkdir(parents=True)
            for i in range(per_class):
                if drop == (v, c, i):
                    continue
                value = 40 * i + 100 * v + (10 if c == "dog" else 0)
                Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(root / c / f"s{i}.png")
        roots.append(str(root))
    return roots


def _paired(roots, **kwargs):
    from transfuse.data.multiview import PairedFolder

    return PairedFolder(roots=roots, load_size=8, image_size=8, channels=3, mean=[0.5], std=[0.5], **kwargs)


def test_paired_folder_aligns_views_by_stem(tmp_path):
    split = _paired(_paired_roots(tmp_path)).load()[0]["train"]
    assert split.images.shape == (8, 2, 3, 8, 8)
    # each sample's views come from the same stem: view 1 is view 0 plus 100 in every pixel
    assert torch.equal(split.images[:, 1].int() - split.images[:, 0].int(), torch.full((8, 3, 8, 8), 100))
    assert split.labels.tolist() == [0] * 4 + [1] * 4
    single = _paired(_paired_roots(tmp_path / "b"), keep_views=[1]).load()[0]["train"]
    assert single.images.shape == (8, 3, 8, 8) and torch.equal(single.images, split.images[:, 1])


def test_paired_folder_names_a_missing_stem_and_refuses_other_classes(tmp_path):
    from transfuse.errors import DataError

    with pytest.raises(DataError, match=r"missing .*view1/dog/s2"):
        _paired(_paired_roots(tmp_path / "a", drop=(1, "dog", 2))).load()
    roots = _paired_roots(tmp_path / "b")
    (Path(roots[1]) / "dog").rename(Path(roots[1]) / "wolf")
    with pytest.raises(DataError, match="classes differ in train"):
        _paired(roots).load()
    with pytest.raises(ConfigError, match="num_views=3 but 2 views are kept"):
        _paired(_paired_roots(tmp_path / "c"), num_views=3).load()


def test_feature_branches_start_from_single_view_runs(make_config):
    single = make_config(
        "data=digits", "backbone=test_resnet", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"
    )
    train(single)
    client = MlflowClient(single.logger.tracking_uri)
    (source,) = client.search_runs([client.get_experiment_by_name(single.logger.experiment_name).experiment_id])
    spec = f"runs:/{source.info.run_id}"
    cfg = make_config(
        "data=multiview",
        "data.source._target_=transfuse.data.UCIDigits",
        "backbone=test_resnet",
        "multi_input=feature",
        f"backbone.branch_weights=[{spec},null]",
    )
    from transfuse import weights
    from transfuse.models.build import build_model

    model = build_model(cfg, [str(d) for d in range(10)])
    fresh = {k: v.clone() for k, v in model.backbone.branches[1].state_dict().items()}
    loaded = weights.initialise(model, weights.InitSpec(), client, model.class_names)
    assert [item.target for item in loaded] == ["init.branch.0"]
    saved = weights.resolve(spec, client, model.backbone.branches[0]).state_dict
    for key, value in model.backbone.branches[0].model.state_dict().items():
        assert torch.equal(value, saved[f"backbone.model.{key}"]), key
    for key, value in model.backbone.branches[1].state_dict().items():
        assert torch.equal(value, fresh[key]), key
