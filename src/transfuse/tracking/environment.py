"""What a run ran on: the installed distributions, the versions that decide results, the device and its threads.

Two installs of the same pyproject can give different numbers for the same seed (a new torch kernel, a new timm
default), so every run records its environment: ``environment.txt`` (every installed distribution, exact
version) and tags ``env.python``, ``env.torch``, ``env.timm``, ``env.lightning``, ``env.mlflow``, ``env.device``,
``env.threads`` and ``env.hash`` (a short hash of the distribution list). A report over runs of several
environments says so (:mod:`transfuse.report.checks`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

#: the distributions whose versions are tags of their own (the rest are in the artifact and the hash)
VERSION_TAGS = {"torch": "torch", "timm": "timm", "lightning": "lightning", "mlflow": "mlflow"}
HASH_TAG, DEVICE_TAG = "env.hash", "env.device"
ARTIFACT = "environment.txt"


@cache
def distributions() -> tuple[str, ...]:
    """``name==version`` of every installed distribution, sorted (what ``pip freeze`` lists, editable installs
    by version)."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower().replace("_", "-")] = dist.version
    return tuple(f"{name}=={version}" for name, version in sorted(found.items()))


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device() -> str:
    """``<GPU name> x<count>`` when torch sees GPUs, else the CPU model. Torch is asked only when the process
    already imported it (a training run), so a report run does not pay for the import."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU {cpu_model()}"


def threads() -> int:
    """Threads torch computes with (its own setting when imported, else the CPUs this process may use)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment_tags() -> dict[str, str]:
    """The ``env.*`` tags of a run started by this process."""
    versions = dict(line.split("==", 1) for line in distributions())
    tags = {"env.python": platform.python_version()}
    tags |= {f"env.{tag}": versions.get(name, "absent") for tag, name in VERSION_TAGS.items()}
    tags |= {DEVICE_TAG: device(), "env.threads": str(threads())}
    tags[HASH_TAG] = hashlib.sha256("\n".join(distributions()).encode()).hexdigest()[:12]
    return tags


def environment_text() -> str:
    """The ``environment.txt`` artifact: Python, platform, device, then one distribution per line."""
    head = [f"# python {platform.python_version()} ({sys.executable})", f"# platform {platform.platform()}"]
    head += [f"# device {device()}, {threads()} threads"]
    return "\n".join([*head, *distributions()]) + "\n"
