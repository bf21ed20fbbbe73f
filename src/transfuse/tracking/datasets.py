"""A run's datasets as MLflow dataset inputs: what the UI's Datasets column and filter show.

Each dataset is logged with a content digest (the images and labels of its carved splits, so two runs with the
same digest saw the same pixels), its split sizes and its class count. The context says what the run did with it:

- ``train``: the labelled data a run fits on (and validates and tests on);
- ``eval``: the data of a run that only evaluates or scores;
- ``target``: the unlabelled target domain of domain adaptation;
- ``source``: the data the run's initial weights were trained on, copied from the source run's own inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag

from transfuse.data.base import ImageTensors
from transfuse.data.streaming import StreamedSplit

#: MLflow's tag on a dataset input naming its role in the run
CONTEXT_TAG = "mlflow.data.context"
#: contexts a run's own data may have (``source`` is the source run's data)
OWN_CONTEXTS = ("train", "eval", "target")
#: hex digits of the digest shown in the UI (MLflow's column takes 36)
DIGEST_LENGTH = 12


def _update(hasher: Any, split: Any, fingerprints: dict[int, str]) -> None:
    """Feed one split's content to ``hasher``: pixels in memory, or the streamed source and the sample indices
    (``fingerprints`` keeps each source's, which stats every file, to one computation for all splits)."""
    if isinstance(split, ImageTensors):
        hasher.update(np.ascontiguousarray(split.images.cpu().numpy()).tobytes())
    elif isinstance(split, StreamedSplit):
        if id(split.source) not in fingerprints:
            fingerprints[id(split.source)] = split.source.fingerprint()
        hasher.update(fingerprints[id(split.source)].encode())
        hasher.update(split.index.cpu().numpy().astype(np.int64).tobytes())
    else:
        raise TypeError(f"cannot digest a split of type {type(split).__name__}")
    hasher.update(split.labels.cpu().numpy().astype(np.int64).tobytes())


def content_digest(splits: Mapping[str, Any], class_names: list[str]) -> str:
    """Digest of the splits' images (or streamed sources and indices), labels and class names, in split order."""
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(json.dumps(class_names).encode())
    fingerprints: dict[int, str] = {}
    for name in sorted(splits):
        hasher.update(name.encode())
        _update(hasher, splits[name], fingerprints)
    return hasher.hexdigest()[:DIGEST_LENGTH]


def dataset_entity(datamodule: Any, name: str) -> Dataset:
    """One datamodule as an MLflow dataset: digest, where it comes from, and a profile of its splits."""
    splits, class_names = datamodule.splits, datamodule.class_names
    sizes = {split: len(part) for split, part in splits.items()}
    profile = {"num_rows": sum(sizes.values()), "splits": sizes, "num_classes": len(class_names)}
    origin = {"class": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}", "from": datamodule.describe()}
    return Dataset(
        name=name,
        digest=content_digest(splits, class_names),
        source_type="code",
        source=json.dumps({"tags": origin}),
        profile=json.dumps(profile),
    )


def own_inputs(datamodule: Any, names: Mapping[str, str | None], fits: bool) -> list[DatasetInput]:
    """The datasets of a run's datamodule: one for a plain datamodule, the source and target of a domain pair.

    Args:
        datamodule: the run's datamodule; a domain pair exposes ``domains`` (``{"source": dm, "target": dm}``).
        names: ``data`` (and ``target_data`` for adaptation): the preset names the datasets are shown under.
        fits: whether the run trains on its data (``train``) or only evaluates it (``eval``).
    """
    domains = getattr(datamodule, "domains", None)
    labelled = "train" if fits else "eval"
    if domains is None:
        parts = [(datamodule, names.get("data") or "data", labelled)]
    else:
        parts = [
            (domains["source"], names.get("data") or "source", labelled),
            (domains["target"], names.get("target_data") or "target", "target"),
        ]
    return [DatasetInput(dataset_entity(dm, name), [InputTag(CONTEXT_TAG, context)]) for dm, name, context in parts]


def source_inputs(client: MlflowClient, source_run_id: str) -> list[DatasetInput]:
    """The datasets the source run trained on, as ``source`` inputs of the run that starts from its weights.

    Only the data (name, digest, source, profile) is copied from the store; nothing in it is interpreted.
    """
    inputs = client.get_run(source_run_id).inputs
    found = []
    for given in inputs.dataset_inputs if inputs is not None else []:
        context = {tag.key: tag.value for tag in given.tags}.get(CONTEXT_TAG)
        if context in ("train", "target"):  # what it trained on; its own ``source`` data is a generation further
            found.append(DatasetInput(given.dataset, [InputTag(CONTEXT_TAG, "source")]))
    return found


def run_inputs(
    client: MlflowClient, datamodule: Any, names: Mapping[str, str | None], fits: bool, source_runs: list[str]
) -> list[DatasetInput]:
    """A run's own datasets, then those its source runs (or fusion members) trained on, each dataset once: MLflow
    keeps one input per dataset (name and digest) and run, so the first context given wins."""
    return with_sources(client, own_inputs(datamodule, names, fits), source_runs)


def with_sources(client: MlflowClient, own: list[DatasetInput], source_runs: list[str]) -> list[DatasetInput]:
    """``own`` inputs, then those the source runs trained on, each dataset (name and digest) once."""
    found = list(own)
    for run_id in dict.fromkeys(source_runs):
        found += source_inputs(client, run_id)
    seen, unique = set(), []
    for given in found:
        key = (given.dataset.name, given.dataset.digest)
        if key not in seen:
            seen.add(key)
            unique.append(given)
    return unique
