"""Several data presets fused into one dataset: pooled splits, one label space, and the source of every image.

``data=mix data.sources=[mnist5k,{name: digits, train_per_class: 20}]`` builds each source from its own preset
(``conf/data/<name>.yaml`` with that source's overrides), splits it as that preset would, and pools the splits.
``data.test_source=<name>`` is DomainBed's leave-one-domain-out: that source stays out of training and
validation and its test split is the mix's test split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from transfuse.data.base import ImageTensors, InMemoryImageDataModule, TensorBatches, _keep_batch
from transfuse.data.transforms import adapt_channels, resize
from transfuse.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LABEL_SPACES = ("union", "intersection")
SAMPLINGS = ("proportional", "balanced")


def preset_dir() -> Path:
    from transfuse.config import CONF_DIR

    return CONF_DIR / "data"


@dataclass
class SourceSpec:
    """One source of a mix: its name in metrics and tags, the preset it is built from, and its overrides."""

    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)


def source_specs(
    sources: Sequence[str | Mapping] | Mapping[str, Mapping | None], what: str = "data.sources"
) -> list[SourceSpec]:
    """``data.sources`` as specs: a list of preset names or ``{name: ..., preset: ..., <overrides>}`` items, or a
    mapping ``{name: {<overrides>}}`` (``preset`` defaults to the name, so one preset may serve twice).

    >>> [s.name for s in source_specs(["mnist5k", {"name": "few", "preset": "digits", "train_per_class": 5}])]
    ['mnist5k', 'few']
    """
    if isinstance(sources, DictConfig | ListConfig):
        sources = OmegaConf.to_container(sources, resolve=True)
    if isinstance(sources, Mapping):
        sources = [{"name": name, **(overrides or {})} for name, overrides in sources.items()]
    specs = []
    for item in sources:
        if isinstance(item, str):
            specs.append(SourceSpec(item, item))
        elif isinstance(item, Mapping) and "name" in item:
            rest = {k: v for k, v in item.items() if k not in ("name", "preset")}
            specs.append(SourceSpec(str(item["name"]), str(item.get("preset", item["name"])), rest))
        else:
            raise ConfigError(f"{what}: each item is a preset name or {{name: ..., <overrides>}}, got {item!r}")
    names = [s.name for s in specs]
    if len(specs) < 2:
        raise ConfigError(f"{what} needs at least two presets, got {names}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} names must differ, got {names} (give one a name: and a preset:)")
    return specs


def preset_config(preset: str, folder: Path | None = None, what: str = "data.sources") -> DictConfig:
    """``conf/data/<preset>.yaml`` with its defaults list applied (the base keys, the augmentation group), as
    Hydra composes it, but unresolved and without the running application (a mix builds its sources at
    instantiation, when Hydra's composition is over)."""
    folder = folder or preset_dir()
    choices = sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_") and p.stem != "mix")
    if preset == "mix" or not (folder / f"{preset}.yaml").is_file():
        raise ConfigError(f"unknown data preset {preset!r} in {what}; choose from {', '.join(choices)}")
    return _compose(folder, preset)


def with_overrides(spec: SourceSpec, what: str = "data.sources") -> DictConfig:
    """``spec``'s preset with its overrides merged in, refusing a key the preset does not have (a typo would
    otherwise surface as a constructor's traceback, or not at all), with the closest key as a hint."""
    import difflib

    preset = preset_config(spec.preset, what=what)
    stack: list[tuple[str, DictConfig, Mapping]] = [("", preset, spec.overrides)]
    while stack:
        prefix, node, given = stack.pop()
        for key, value in given.items():
            if key not in node:
                close = difflib.get_close_matches(str(key), [str(k) for k in node], n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                raise ConfigError(f"{what}: {spec.name} sets {prefix}{key}, which preset {spec.preset} has not{hint}")
            if isinstance(value, Mapping) and isinstance(node[key], DictConfig):
                stack.append((f"{prefix}{key}.", node[key], value))
    return OmegaConf.merge(preset, spec.overrides)


def _compose(folder: Path, name: str) -> DictConfig:
    raw = OmegaConf.load(folder / f"{name}.yaml")
    defaults = list(raw.pop("defaults", []))
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, raw)
        elif isinstance(entry, str):
            merged = OmegaConf.merge(merged, _compose(folder, entry))
        else:  # a group choice such as `augment: digits`
            ((group, choice),) = entry.items()
            path = folder / group / f"{choice}.yaml"
            node = OmegaConf.load(path)
            package_here = "@package data" in path.read_text().split("\n", 1)[0]
            merged = OmegaConf.merge(merged, node if package_here else {group: node})
    return merged


def _to_common(images: Tensor, size: int, channels: int) -> Tensor:
    """uint8 images of any size and channel count -> uint8 ``[N, channels, size, size]``."""
    if images.ndim != 4:
        raise ConfigError("data=mix fuses single-view datasets; a source gives several views per sample")
    out = []
    for chunk in images.split(1024):
        x = resize(adapt_channels(chunk.float() / 255.0, channels), size)
        out.append((x * 255.0).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out) if out else images.new_zeros((0, channels, size, size))


class DomainBatches(TensorBatches):
    """Batches of ``(images, labels, domains)``: the source index of every image rides along for per-source
    metrics."""

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.data.images[i], self.data.labels[i], self.data.domains[i]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(indices)
        return self.data.images[index], self.data.labels[index], self.data.domains[index]


class MixedDomains(InMemoryImageDataModule):
    """Several presets as one dataset: their splits pooled in one label space, at one image size and channels.

    Args:
        sources: the presets, see :func:`source_specs`.
        labels: ``union`` (every class of any source) or ``intersection`` (only classes all sources share; the
            images of other classes are left out). Classes are matched by name, in first-seen order.
        sampling: how training batches draw from the sources: ``proportional`` (every image alike, so large
            sources dominate), ``balanced`` (each source equally often), or one weight per source.
        test_source: leave this source out of training and validation and test on its test split.
        data_dir: what a source preset's ``${paths.data_dir}`` means.
        backbone_name: what a source preset's ``${backbone.name}`` means (the streaming presets read timm's
            defaults by it).
        **kwargs: as for :class:`InMemoryImageDataModule`; ``image_size``, ``channels`` and ``subset_seed``
            apply to every source.
    """

    def __init__(
        self,
        sources: Sequence[str | Mapping] | Mapping[str, Mapping | None],
        labels: str = "union",
        sampling: str | Sequence[float] = "proportional",
        test_source: str | None = None,
        data_dir: str = "data",
        backbone_name: str = "resnet18",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.specs = source_specs(sources)
        names = [s.name for s in self.specs]
        if labels not in LABEL_SPACES:
            raise ConfigError(f"data.labels must be one of {LABEL_SPACES}, got {labels!r}")
        if test_source is not None and test_source not in names:
            raise ConfigError(f"data.test_source={test_source} is not among data.sources {names}")
        training = [n for n in names if n != test_source]
        if isinstance(sampling, str):
            if sampling not in SAMPLINGS:
                choices = " or ".join(SAMPLINGS)
                raise ConfigError(f"data.sampling must be {choices} or a list of weights, got {sampling}")
            self.weights = None if sampling == "proportional" else [1.0] * len(names)
        else:
            weights = [float(w) for w in sampling]
            if len(weights) != len(names) or min(weights) < 0 or sum(weights) <= 0:
                raise ConfigError(f"data.sampling needs {len(names)} weights >= 0, one per source, got {weights}")
            self.weights = weights
        self.labels_mode, self.sampling, self.test_source = labels, sampling, test_source
        self.training_sources = training
        self.data_dir, self.backbone_name = data_dir, backbone_name
        self.source_modules: dict[str, InMemoryImageDataModule] = {}
        for spec in self.specs:  # unknown presets and keys fail here, before any run opens
            with_overrides(spec)

    @property
    def domain_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def describe(self) -> str:
        return f"data=mix of {', '.join(self.domain_names)}"

    def run_tags(self) -> dict[str, str]:
        tags = {"data.sources": ",".join(self.domain_names), "data.labels": self.labels_mode}
        tags["data.sampling"] = self.sampling if isinstance(self.sampling, str) else ",".join(map(str, self.sampling))
        if self.test_source is not None:
            tags["data.test_source"] = self.test_source
        return tags

    def build_source(self, spec: SourceSpec) -> InMemoryImageDataModule:
        """The datamodule of one source: its preset, its overrides, and the mix's size, channels and seeds."""
        from hydra.utils import instantiate

        shared = {
            "image_size": self.transform.image_size,
            "channels": self.transform.channels,
            "mean": self.transform.mean.flatten().tolist(),
            "std": self.transform.std.flatten().tolist(),
            "subset_seed": self.subset_seed,
        }
        node = OmegaConf.merge(with_overrides(spec), shared)
        context = OmegaConf.create(
            {
                "data": node,
                "seed": self.subset_seed,
                "paths": {"data_dir": self.data_dir},
                "backbone": {"name": self.backbone_name, "image_size": shared["image_size"]},
            }
        )
        try:
            OmegaConf.resolve(context)
        except Exception as err:  # an interpolation the mix cannot supply: say which source
            raise ConfigError(f"data.sources: source {spec.name!r} ({spec.preset}) does not resolve: {err}") from err
        return instantiate(context.data)

    def load(self) -> tuple[dict[str, ImageTensors], list[str]]:
        per_source = {}
        for spec in self.specs:
            module = self.source_modules.get(spec.name) or self.build_source(spec)
            self.source_modules[spec.name] = module
            per_source[spec.name] = (module.splits, module.class_names)
        class_names = self._label_space({name: names for name, (_, names) in per_source.items()})
        index = {c: i for i, c in enumerate(class_names)}
        size, channels = self.transform.image_size, self.transform.channels
        pooled: dict[str, list[ImageTensors]] = {"train": [], "val": [], "test": []}
        for d, (name, (splits, names)) in enumerate(per_source.items()):
            mapping = torch.tensor([index.get(c, -1) for c in names], dtype=torch.long)
            held_out = name == self.test_source
            for split, part in splits.items():
                if (split == "test") != held_out and self.test_source is not None:
                    continue  # leave-one-domain-out: train/val from the others, test from the held-out source
                labels = mapping[part.labels]
                keep = labels >= 0
                images = _to_common(part.images[keep], size, channels)
                domains = torch.full((int(keep.sum()),), d, dtype=torch.long)
                pooled[split].append(ImageTensors(images, labels[keep], domains))
        splits = {split: _concat(parts) for split, parts in pooled.items()}
        for split, part in splits.items():
            counts = torch.bincount(part.domains, minlength=len(self.specs)).tolist()
            shares = ", ".join(f"{n}={c}" for n, c in zip(self.domain_names, counts, strict=True) if c)
            log.info("mix %s: %s", split, shares)
        return splits, class_names

    def _label_space(self, names: dict[str, list[str]]) -> list[str]:
        union = list(dict.fromkeys(c for classes in names.values() for c in classes))
        if self.labels_mode == "union":
            return union
        shared = [c for c in union if all(c in classes for classes in names.values())]
        if len(shared) < 2:
            each = "; ".join(f"{n}: {', '.join(c[:6])}{'...' if len(c) > 6 else ''}" for n, c in names.items())
            found = f"only {shared[0]!r}" if shared else "no class"
            message = f"data.sources share {found} under data.labels=intersection ({each})"
            raise DataError(f"{message}; data.labels=union keeps every class")
        return shared

    def loader(self, split: str, train: bool = False, labels: bool = True) -> DataLoader:
        """Training batches drawn by ``sampling``; evaluation batches with the source index of each image."""
        data = self.splits[split]
        if not labels:
            data = ImageTensors(data.images, torch.zeros_like(data.labels), data.domains)
        if train:
            return self._train_batches(TensorBatches(data), data.domains)
        return self._batches(DomainBatches(data), split, False, self.num_workers, collate_fn=_keep_batch)

    def _train_batches(self, dataset: Dataset, domains: Tensor) -> DataLoader:
        if self.weights is None:
            return self._batches(dataset, "train", True, self.num_workers, collate_fn=_keep_batch)
        counts = torch.bincount(domains, minlength=len(self.specs)).double().clamp(min=1)
        per_image = torch.tensor(self.weights, dtype=torch.double)[domains] / counts[domains]
        sampler = WeightedRandomSampler(per_image, num_samples=len(domains), replacement=True)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=_keep_batch,
        )


def _concat(parts: list[ImageTensors]) -> ImageTensors:
    return ImageTensors(
        torch.cat([p.images for p in parts]),
        torch.cat([p.labels for p in parts]),
        torch.cat([p.domains for p in parts]),
    )
