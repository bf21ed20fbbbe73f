"""Mechanics of the fine-tuning strategies, checked on real timm models."""

from __future__ import annotations

import types

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback

from tests.conftest import FAST
from transfuse.errors import ConfigError
from transfuse.finetune import LPFT, Gradual, adapt_batchnorm
from transfuse.models.build import build_model
from transfuse.models.feature_cache import FeatureCache, image_keys

CLASSES = ["disk", "square", "triangle", "cross"]


@pytest.fixture
def build(make_config):
    def make(*overrides):
        cfg = make_config(*FAST, *overrides)
        torch.manual_seed(0)
        return cfg, build_model(cfg, CLASSES)

    return make


def _one_step(model, images, labels):
    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    loss = model.criterion(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _batch(n=8, size=32):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=generator), torch.arange(n) % 4


def test_partial_freezing_leaves_the_first_blocks_untouched(build):
    _, model = build("finetune=partial", "finetune.freeze_blocks=2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _one_step(model, *_batch())
    blocks = model.backbone_blocks()
    frozen = {n for names, _ in blocks[:2] for n in names}
    for name, parameter in model.named_parameters():
        if name in frozen:
            assert parameter.grad is None and torch.equal(parameter, before[name]), name
        else:
            assert parameter.requires_grad
    frozen_modules = {m for _, modules in blocks[:2] for m in modules}
    stats = [k for k in before if k.endswith("running_mean") and k.rsplit(".", 1)[0] in frozen_modules]
    assert stats and all(torch.equal(model.state_dict()[k], before[k]) for k in stats)
    trained = [n for names, _ in blocks[2:] for n in names]
    assert any(not torch.equal(model.state_dict()[n], before[n]) for n in trained)


def test_layer_wise_learning_rates_decrease_toward_the_input(build):
    _cfg, model = build("finetune.layer_decay=0.5", "finetune.head_lr_mult=10", "optimizer.lr=0.1")
    optimizer = model.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    blocks = model.backbone_blocks()
    parameters = dict(model.named_parameters())
    n = len(blocks)
    for i, (names, _) in enumerate(blocks):
        for name in names:
            assert lr_of[id(parameters[name])] == pytest.approx(0.1 * 0.5 ** (n - i)), name
    assert lr_of[id(model.head.fc.weight)] == pytest.approx(1.0)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(parameters)


def test_l2_sp_penalty_is_zero_at_the_source_and_grows_quadratically(build):
    _, model = build("finetune=l2_sp", "finetune.alpha=2.0", "finetune.beta=0.0")
    strategy = model.finetune
    strategy.snapshot(model)
    assert strategy.penalty(model).item() == 0.0
    weight = next(model.backbone.parameters())
    with torch.no_grad():
        weight.add_(0.1)
    first = strategy.penalty(model).item()
    assert first == pytest.approx(0.5 * 2.0 * 0.01 * weight.numel(), rel=1e-4)
    with torch.no_grad():
        weight.add_(0.1)
    assert strategy.penalty(model).item() == pytest.approx(4 * first, rel=1e-4)
    strategy.beta = 1.0
    head = sum((p**2).sum() for p in model.head.parameters()).item()
    assert strategy.penalty(model).item() == pytest.approx(4 * first + 0.5 * head, rel=1e-4)


def test_adabn_changes_only_batchnorm_statistics(build):
    cfg, model = build("finetune.bn=adabn")
    datamodule = instantiate(cfg.data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stem_bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    handle = stem_bn.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    trainer = types.SimpleNamespace(datamodule=datamodule)
    seen = adapt_batchnorm(model, trainer)
    handle.remove()
    assert seen == len(datamodule.splits["train"])
    # momentum=None makes BatchNorm keep the plain average of the per-batch means
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(dim=0)
    torch.testing.assert_close(stem_bn.running_mean, expected, rtol=1e-4, atol=1e-5)
    for key, value in model.state_dict().items():
        statistic = key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if not statistic:
            assert torch.equal(value, before[key]), key
    assert not torch.equal(stem_bn.running_mean, before[next(k for k in before if k.endswith("running_mean"))])


def test_frozen_batchnorm_keeps_statistics_but_trains_its_affine_weights(build):
    _, model = build("finetune.bn=freeze")
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mean, weight = bn.running_mean.clone(), bn.weight.clone()
    _one_step(model, *_batch())
    assert torch.equal(bn.running_mean, mean)
    assert not torch.equal(bn.weight, weight)


class Recorder(Callback):
    """Records the head and backbone at epoch boundaries and what trains in each epoch."""

    def __init__(self):
        self.head_end, self.head_start, self.trainable, self.backbone_start = {}, {}, {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx:
            return
        epoch = trainer.current_epoch  # state after every epoch-start hook, when the first step runs
        self.head_start[epoch] = module.head.fc.weight.detach().clone()
        self.backbone_start[epoch] = next(module.backbone.parameters()).detach().clone()
        self.trainable[epoch] = [
            any(p.requires_grad for n in names for p in [dict(module.named_parameters())[n]])
            for names, _ in module.backbone_blocks()
        ]

    def on_train_epoch_end(self, trainer, module):
        self.head_end[trainer.current_epoch] = module.head.fc.weight.detach().clone()


def _fit(cfg, model, epochs):
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[recorder]
    )
    trainer.fit(model, datamodule=instantiate(cfg.data))
    return recorder


def test_lp_ft_second_phase_starts_from_the_probed_head(build):
    cfg, model = build("finetune=lp_ft", "finetune.probe_epochs=1")
    recorder = _fit(cfg, model, epochs=2)
    assert recorder.trainable[0] == [False] * len(recorder.trainable[0])
    assert all(recorder.trainable[1])
    assert torch.equal(recorder.head_start[1], recorder.head_end[0])
    assert not torch.equal(recorder.head_end[0], recorder.head_start[0])  # the probe trained the head
    assert torch.equal(recorder.backbone_start[1], recorder.backbone_start[0])  # ... and nothing else
    assert model.feature_cache.hits > 0  # the probe's second pass over val used cached features


def test_gradual_unfreezes_one_block_from_the_top_per_step(build):
    cfg, model = build("finetune=gradual", "finetune.unfreeze_every=1", "trainer.max_epochs=3")
    recorder = _fit(cfg, model, epochs=3)
    n = len(recorder.trainable[0])
    for epoch in range(3):
        frozen = Gradual(unfreeze_every=1).frozen_at(epoch, n)
        assert recorder.trainable[epoch] == [False] * frozen + [True] * (n - frozen)


def test_feature_cache_reuses_and_invalidates(build):
    _, model = build()
    backbone = model.backbone.eval()
    cache = FeatureCache()
    images, _ = _batch(6)
    cache.check_weights(backbone)
    first = cache(backbone, images)
    torch.testing.assert_close(first, backbone(images))
    assert (cache.hits, cache.misses) == (0, 6)
    shuffled = cache(backbone, images.flip(0))  # same images in another order and batch position
    torch.testing.assert_close(shuffled, first.flip(0))
    assert (cache.hits, cache.misses) == (6, 6)
    cache(backbone, images + 1e-3)  # other data: new entries, never a stale hit
    assert cache.misses == 12
    cache.check_weights(backbone)
    assert len(cache.store) == 12  # same weights: kept
    with torch.no_grad():
        next(backbone.parameters()).add_(1.0)
    cache.check_weights(backbone)
    assert not cache.store  # changed weights: cleared
    torch.testing.assert_close(cache(backbone, images), backbone(images))


def test_image_keys_depend_on_content_only():
    images, _ = _batch(4)
    keys = image_keys(images)
    assert len(set(keys)) == 4
    assert image_keys(images[2:3]) == [keys[2]]
    changed = images.clone()
    changed[1, 0, 5, 5] += 1e-6
    assert image_keys(changed)[1] != keys[1] and image_keys(changed)[0] == keys[0]


def test_caching_turns_training_augmentation_off(build):
    cfg, model = build("finetune=linear_probe", "data/augment=digits")
    datamodule = instantiate(cfg.data)
    images, labels = next(iter(datamodule.train_dataloader()))
    trainer = types.SimpleNamespace(training=True, lightning_module=model)
    datamodule.trainer = trainer
    first, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    second, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(first, second)
    model.finetune.cache_features = False
    third, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert not torch.equal(first, third)


def test_cache_takes_raw_images_and_transforms_only_misses(build):
    cfg, model = build("finetune=linear_probe")
    datamodule = instantiate(cfg.data)
    raw, labels = next(iter(datamodule.val_dataloader()))
    model.input_transform = datamodule.transform
    model.eval()
    datamodule.trainer = types.SimpleNamespace(training=False, lightning_module=model)
    handed, _ = datamodule.on_after_batch_transfer((raw, labels), 0)
    assert handed.dtype == torch.uint8 and torch.equal(handed, raw)  # the cache gets the raw images
    with torch.no_grad():
        expected = model.head(model.backbone(datamodule.transform(raw, train=False)))
        torch.testing.assert_close(model(handed), expected)
        assert (model.feature_cache.hits, model.feature_cache.misses) == (0, len(raw))
        torch.testing.assert_close(model(handed[:3]), expected[:3])
        assert model.feature_cache.hits == 3
        # another transform of the same images (a different size) must not reuse those features
        other = instantiate(cfg.data, image_size=cfg.data.image_size + 8).transform
        assert other.key != datamodule.transform.key
        model.input_transform = other
        torch.testing.assert_close(model(handed[:3]), model.head(model.backbone(other(raw[:3], train=False))))
        assert model.feature_cache.misses == len(raw) + 3


def test_raw_and_transformed_keys_never_collide():
    raw = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert not set(image_keys(raw)) & set(image_keys(raw.float()))


@pytest.mark.parametrize(
    ("strategy", "shortest"),
    [(lambda: LPFT(probe_epochs=5), 6), (lambda: Gradual(unfreeze_every=3), 4)],
    ids=["lp_ft", "gradual"],
)
def test_a_schedule_too_short_for_the_strategy_to_act_is_refused(strategy, shortest):
    strategy().check_schedule(shortest)  # long enough: the backbone trains for at least one epoch
    with pytest.raises(ConfigError, match=f"trainer.max_epochs={shortest - 1}"):
        strategy().check_schedule(shortest - 1)


def test_lp_ft_within_its_probe_is_refused_before_any_run_opens(make_config, tracking_uri):
    from mlflow import MlflowClient

    from transfuse.train import train

    cfg = make_config(*FAST, "finetune=lp_ft", "finetune.probe_epochs=2")  # FAST trains 2 epochs
    with pytest.raises(ConfigError, match="the backbone would never be fine-tuned"):
        train(cfg)
    assert MlflowClient(tracking_uri).search_runs(["0"]) == []
    assert not [e for e in MlflowClient(tracking_uri).search_experiments() if e.name != "Default"]
