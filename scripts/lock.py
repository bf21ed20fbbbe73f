"""Write ``requirements-lock.txt``, the exact versions that ``scripts/_bootstrap.sh`` installs, from pyproject.toml.

pyproject.toml keeps version ranges, for people who install transfuse into their own environment; the lock pins
every distribution (the ``dev`` extra's too) to the versions our tests ran with, so a fresh checkout on another
machine installs those. Nothing regenerates the lock by itself: run this on purpose, then the tests, and commit
pyproject.toml and the lock together.

Usage::

    .venv/bin/python scripts/lock.py               # after editing pyproject.toml: keep every pin, add what is new
    .venv/bin/python scripts/lock.py --upgrade     # move every pin to the newest release the ranges allow
    .venv/bin/python scripts/lock.py -P timm       # move one pin to its newest release (repeatable), keep the others
    .venv/bin/python scripts/lock.py -P timm==1.0.31   # or to a given version
    .venv/bin/python scripts/lock.py --check       # does the lock pin everything pyproject.toml asks for?

pip-compile (pip-tools, in the ``dev`` extra) resolves for the running interpreter and platform: the lock is for
CPython 3.11 on x86-64 Linux, where the tests run. It does not read pip's ``constraint`` setting, so the files
that setting names (in pip.conf or ``PIP_CONSTRAINT``) are passed on: the lock never pins a version that this
machine's pip would refuse to install.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip-tools brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements-lock.txt"
#: the extras that the lock installs with the package
EXTRAS = ("dev",)


def pip_constraints() -> list[str]:
    """The constraint files that pip's configuration names (pip.conf, ``PIP_CONSTRAINT``)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    files = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".constraint"):
            files += value.strip().strip("'\"").split()
    return list(dict.fromkeys(files))


def compile_lock(pip_compile_args: list[str]) -> None:
    """Run pip-compile on pyproject.toml into :data:`LOCK`, keeping its existing pins unless told to upgrade."""
    constraints = [arg for path in pip_constraints() for arg in ("--constraint", path)]
    command = [
        *(sys.executable, "-m", "piptools", "compile", "pyproject.toml", "--output-file", LOCK.name),
        *(arg for extra in EXTRAS for arg in ("--extra", extra)),
        "--strip-extras",  # plain name==version lines, usable as a constraints file too
        "--allow-unsafe",  # pin setuptools, which torch requires at run time
        # index and link options stay in each machine's pip configuration, not in the lock
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--quiet",  # the result is the lock; git diff shows what moved
        *constraints,
        *pip_compile_args,
    ]
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "python scripts/lock.py"}  # the lock's header says so
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def pinned(lock_text: str) -> dict[str, str]:
    r"""``{normalised name: version}`` of the ``name==version`` lines of a lock.

    >>> pinned("torch==2.14.1\n    # via transfuse\nPyYAML==6.0.3 ; python_version >= '3.8'")
    {'torch': '2.14.1', 'pyyaml': '6.0.3'}
    """
    pins = {}
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them.

    >>> normalise("Typing_Extensions"), normalise("zope.interface")
    ('typing-extensions', 'zope-interface')
    """
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_pins(pyproject: Path = ROOT / "pyproject.toml", lock: Path = LOCK) -> list[str]:
    """The requirements of pyproject.toml (dependencies and :data:`EXTRAS`) that the lock leaves unpinned or pins
    outside their range; empty when the lock is up to date.
    """
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    wanted = [*project["dependencies"], *(r for extra in EXTRAS for r in project["optional-dependencies"][extra])]
    pins = pinned(lock.read_text())
    problems = []
    for line in wanted:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # not for this platform or interpreter
        version = pins.get(normalise(requirement.name))
        if version is None:
            problems.append(f"{line}: not in {lock.name}")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{line}: {lock.name} pins {version}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to pip-compile (e.g. --upgrade, -P NAME).",
    )
    parser.add_argument("--check", action="store_true", help="only check that the lock covers pyproject.toml")
    args, rest = parser.parse_known_args()
    if not args.check:
        compile_lock(rest)
    elif rest:
        parser.error(f"--check takes no other arguments: {' '.join(rest)}")
    problems = missing_pins()
    if problems:
        sys.exit(
            f"{LOCK.name} does not match pyproject.toml ({'; '.join(problems)}): run python scripts/lock.py"
            if args.check
            else f"pip-compile left {LOCK.name} out of step with pyproject.toml: {'; '.join(problems)}"
        )


if __name__ == "__main__":
    main()
