"""Bad inputs as a user types them: each ends with one line ``transfuse-<cmd>: error: ...`` on stderr, without a
traceback, and an input error found before training leaves no MLflow run.

Every command runs for real in its own folder (with its own empty ``mlflow.db``). A command spends seconds
importing torch, Lightning and MLflow before it fails, so the module runs them all at once, two at a time, and
each test reads its own outcome; library-level checks that need no process are plain unit tests.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import last_line, run_cli
from transfuse.data.image_folder import ImageFolder
from transfuse.data.multiview import PairedFolder
from transfuse.errors import ConfigError, DataError, FusionError, ReportError, WeightsError
from transfuse.fusion.members import find_members
from transfuse.models.build import build_model
from transfuse.overrides import check_added_keys, root_keys
from transfuse.report.query import check_store
from transfuse.weights import Checkpoint, load_into
from transfuse.weights.sources import read_file

TRAIN, FUSE, REPORT = "transfuse.train", "transfuse.fuse", "transfuse.report.cli"
PROGS = {TRAIN: "transfuse-train", FUSE: "transfuse-fuse", REPORT: "transfuse-report"}
#: a model small enough to build in a blink; every case fails before it would train
SMALL = ["backbone=test_resnet", "trainer.max_epochs=1"]
SYNTHETIC = ["data=synthetic", "data.per_class=24"]
UNBALANCED = "tags.x = 'a"
KW = {"image_size": 8, "channels": 3, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


def _image_folder(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``: ``counts[class]`` small images per class (0: an empty class folder)."""
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (60 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def _random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


def _resnet18_checkpoint(path: Path) -> Path:
    """A plain timm ResNet-18 state dict: another architecture than the test ViT it is loaded into."""
    import timm

    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    return path


def _report_filter(folder: Path) -> tuple[str, list[str]]:
    MlflowClient(f"sqlite:///{folder}/mlflow.db").create_experiment("e")  # the filter is what is wrong
    return REPORT, ["--experiment", "e", "--filter", UNBALANCED]


#: case -> (folder -> (module, arguments)): writes what the command needs into its folder
CASES: dict[str, Callable[[Path], tuple[str, list[str]]]] = {
    "one_class": lambda d: (TRAIN, [*SMALL, "data=image_folder", f"data.root={_image_folder(d / 'one', {'a': 4})}"]),
    "empty_class": lambda d: (
        TRAIN,
        [*SMALL, "data=image_folder", f"data.root={_image_folder(d / 'pets', {'a': 4, 'b': 4, 'c': 0})}"],
    ),
    "random_bytes": lambda d: (
        TRAIN,
        [*SMALL, *SYNTHETIC, "stage=finetune", f"init.weights={_random_bytes(d / 'x.ckpt')}"],
    ),
    "architecture": lambda d: (
        TRAIN,
        ["backbone=test_vit", *SYNTHETIC, "stage=finetune", f"init.weights={_resnet18_checkpoint(d / 'r18.pth')}"],
    ),
    "missing_root": lambda d: (TRAIN, [*SMALL, "data=image_folder", f"data.root={d / 'nonexistent'}"]),
    "wrong_run_id": lambda d: (TRAIN, [*SMALL, *SYNTHETIC, "stage=finetune", "init.weights=runs:/0123456789abcdef"]),
    "train_filter": lambda d: (TRAIN, [*SMALL, *SYNTHETIC, "stage=finetune", f'init.weights="{UNBALANCED}"']),
    "fuse_filter": lambda d: (FUSE, [f'pool.filter="{UNBALANCED}"']),
    "report_filter": _report_filter,
    "empty_pool": lambda d: (FUSE, []),
    "missing_store": lambda d: (REPORT, ["--experiment", "e", "--tracking-uri", f"sqlite:///{d}/typo.db"]),
    "added_typo": lambda d: (TRAIN, [*SMALL, "+optimzer.lr=0.1"]),
}


@pytest.fixture(scope="module")
def outcomes(module_dir: Path, _empty_store: Path) -> dict[str, tuple[Path, str]]:
    """``{case: (its folder, the one error line)}`` after running every case's command, two at a time; checks
    that each failed with a single error line on stderr and no traceback."""
    commands = {}
    for name, make in CASES.items():
        folder = module_dir / name
        folder.mkdir()
        shutil.copyfile(_empty_store, folder / "mlflow.db")
        commands[name] = (folder, *make(folder))

    def run(item: tuple[Path, str, list[str]]) -> subprocess.CompletedProcess:
        folder, module, args = item
        return run_cli(module, args, folder)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    results = {}
    for name, result in done.items():
        prog = PROGS[commands[name][1]]
        assert result.returncode != 0, f"{name} succeeded: {result.stdout[-2000:]}"
        assert "Traceback" not in result.stderr, f"{name}: {result.stderr[-3000:]}"
        assert result.stderr.count(f"{prog}: error:") == 1, f"{name}: {result.stderr[-3000:]}"
        results[name] = (commands[name][0], last_line(result.stderr))
    return results


def _runs(folder: Path) -> list:
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# --- 1. a dataset of one class ----------------------------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_one_class_dataset_names_its_root(outcomes):
    folder, line = outcomes["one_class"]
    assert line == (
        f"transfuse-train: error: image folder {folder / 'one'} has 1 class (a); "
        "a classifier needs at least two classes"
    )


# --- 2. an empty class folder -----------------------------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_empty_class_folder_is_refused_by_name(outcomes):
    folder, line = outcomes["empty_class"]
    assert line == (
        f"transfuse-train: error: 1 class folder(s) hold no images: {folder / 'pets' / 'c'} "
        "(add images, remove the folders or set data.on_empty_class=skip)"
    )


def test_skip_leaves_empty_class_folders_out_with_one_warning(tmp_path, caplog):
    root = _image_folder(tmp_path / "pets", {"a": 4, "b": 0, "c": 4, "d": 0})
    with caplog.at_level(logging.WARNING, logger="transfuse.data.image_folder"):
        dm = ImageFolder(root=str(root), load_size=8, on_empty_class="skip", **KW)
        assert dm.class_names == ["a", "c"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"skipped 2 class folder(s) without images: {root / 'b'}, {root / 'd'}"]


def test_paired_folder_refuses_an_empty_class_folder_unless_skipped(tmp_path):
    roots = [_image_folder(tmp_path / view, {"a": 3, "b": 3, "c": 0}) for view in ("rgb", "ir")]
    paired = {"roots": [str(r) for r in roots], "load_size": 8, **KW}
    with pytest.raises(DataError, match=r"2 class folder\(s\) hold no images: .*rgb/c, .*ir/c"):
        PairedFolder(**paired).load()
    assert PairedFolder(**paired, on_empty_class="skip").class_names == ["a", "b"]
    with pytest.raises(ConfigError, match="on_empty_class"):
        ImageFolder(root=str(roots[0]), on_empty_class="ignore", **KW)


# --- 3. a weights file that is not one ----------------------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_random_bytes_are_not_a_readable_weights_file(outcomes):
    folder, line = outcomes["random_bytes"]
    assert line == (
        f"transfuse-train: error: {folder / 'x.ckpt'} is not a readable weights file: expected a state dict or "
        "Lightning checkpoint saved with torch.save (.pth, .pt, .bin, .ckpt) or a .safetensors file"
    )
    assert _runs(folder) == []


@pytest.mark.parametrize("name", ["a.ckpt", "a.pth", "a.safetensors", "empty.pt"])
def test_read_file_refuses_unreadable_bytes_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else os.urandom(2048))
    with pytest.raises(WeightsError, match=f"^{re.escape(str(path))} is not a readable weights file"):
        read_file(path)


def test_read_file_refuses_a_pickled_module_saying_what_to_save(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(WeightsError, match=r"pickles torch\.nn\.modules\.linear\.Linear.*model\.state_dict\(\)"):
        read_file(tmp_path / "model.pt")


# --- 4. an architecture mismatch is one short line ----------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_checkpoint_of_another_architecture_is_one_short_line(outcomes):
    folder, line = outcomes["architecture"]
    assert line == (
        f"transfuse-train: error: checkpoint {(folder / 'r18.pth').resolve()} shares no backbone tensor with the "
        "model (first expected key: backbone.model.cls_token); was it trained with another backbone?"
    )
    assert len(line) < 300
    assert _runs(folder) == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (["backbone=resnet18"], r"47 shape mismatches, first backbone\.model\.bn1\.weight: checkpoint \(64,\)"),
        (["backbone=test_resnet", "backbone.in_chans=1"], r"1 shape mismatch: backbone\.model\.conv1\.0\.weight"),
    ],
)
def test_shape_mismatch_message_stays_short(make_config, source, message):
    classes = ["a", "b"]
    state = build_model(make_config(*source), classes).state_dict()
    checkpoint = Checkpoint(state, "/a/path/as/long/as/a/pytest/temporary/folder/test_shape_mismatch0/source.pth")
    with pytest.raises(WeightsError, match=message) as info:
        load_into(build_model(make_config("backbone=test_resnet"), classes), checkpoint, classes)
    assert len(str(info.value)) < 300


# --- 5. a filter with an unbalanced quote ---------------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
@pytest.mark.parametrize(
    ("case", "start"),
    [
        ("train_filter", f'transfuse-train: error: invalid run query "{UNBALANCED}": '),
        ("fuse_filter", f'transfuse-fuse: error: invalid pool.filter "{UNBALANCED}": '),
        ("report_filter", f'transfuse-report: error: invalid filter "{UNBALANCED}": '),
    ],
)
def test_unbalanced_quote_quotes_the_filter_without_the_finished_clause(outcomes, case, start):
    folder, line = outcomes[case]
    assert line.startswith(start)
    assert "FINISHED" not in line and "attributes.status" not in line
    assert _runs(folder) == []


# --- 6. an empty pool ---------------------------------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_empty_pool_has_its_own_message(outcomes):
    folder, line = outcomes["empty_pool"]
    assert line == 'transfuse-fuse: error: no members: give pool.runs=[<run id>,...] or pool.filter="<MLflow filter>"'
    assert _runs(folder) == []


def test_a_blank_filter_is_no_filter(tracking_uri):
    with pytest.raises(FusionError, match=r"^no members"):
        find_members(MlflowClient(tracking_uri), [], "  ")


# --- 7. a report of a SQLite store that does not exist -------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_report_refuses_a_sqlite_store_that_does_not_exist(outcomes):
    folder, line = outcomes["missing_store"]
    assert line == (
        f"transfuse-report: error: no MLflow store at {folder}/typo.db (from sqlite:///{folder}/typo.db); "
        "check --tracking-uri: a report only reads a store and does not create one"
    )
    assert not (folder / "typo.db").exists()


def test_check_store_passes_an_existing_store_and_other_schemes(tracking_uri, tmp_path):
    check_store(tracking_uri)
    check_store("http://127.0.0.1:5000")
    with pytest.raises(ReportError, match="cannot parse the tracking URI"):
        check_store("sqlite:/typo.db")


# --- 8. a key added with + that nothing reads ----------------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
def test_added_typo_is_refused_naming_the_nearest_key(outcomes):
    folder, line = outcomes["added_typo"]
    assert line == (
        "transfuse-train: error: +optimzer.lr=0.1 adds a top-level key 'optimzer' that nothing reads; did you mean "
        "optimizer.lr=0.1? (a + adds keys only under known ones, e.g. +tags.<name>=<value>)"
    )
    assert _runs(folder) == []


def test_keys_added_under_known_or_existing_nodes_pass(make_config):
    known = root_keys("train")
    assert {"optimizer", "trainer", "tags", "seed", "init", "adapt", "experiment"} <= known
    assert "pool" in root_keys("fuse") and "pool" not in known
    added = ["+tags.owner=me", "+callbacks.x._target_=builtins.dict", "++trainer.limit_train_batches=2"]
    check_added_keys(make_config(*added), added, known)
    adapt = ["stage=adapt", "+target_data.extra=1"]  # target_data: a node that stage=adapt adds
    check_added_keys(make_config(*adapt), adapt, known)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+optimzer=sgd", r"did you mean optimizer=sgd\?"),
        ("++sed=3", r"did you mean seed=3\?"),
        ("+zzzqqq.a=1", r"train\.yaml has no 'zzzqqq'"),
    ],
)
def test_unknown_added_keys_are_refused(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        check_added_keys(make_config(override), [override], root_keys("train"))


# --- 9. input errors found before training leave no run -----------------------------------------------------------


@pytest.mark.slow  # twelve real commands: the fixture takes about a minute of CPU
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_root", "transfuse-train: error: image folder {folder}/nonexistent does not exist"),
        (
            "wrong_run_id",
            "transfuse-train: error: no MLflow run with id '0123456789abcdef' in sqlite:///mlflow.db; "
            "the store holds no run yet",
        ),
        ("architecture", None),
        ("one_class", None),
    ],
)
def test_input_errors_before_training_create_no_run(outcomes, case, expected):
    folder, line = outcomes[case]
    if expected is not None:
        assert line == expected.format(folder=folder)
    assert _runs(folder) == []
