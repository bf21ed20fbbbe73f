"""The shape of the house: no import circle, no entry point importing another, one training step for every
model variant (so a strategy's penalty reaches a distilled student), input errors unwrapped from Hydra."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from transfuse.config import compose_config
from transfuse.data.transforms import BatchTransform
from transfuse.errors import ConfigError
from transfuse.models.build import build_model
from transfuse.sweeps import input_error

SRC = Path(__file__).resolve().parents[1] / "src" / "transfuse"
ENTRY_POINTS = {"transfuse.train", "transfuse.fuse", "transfuse.report.cli"}


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = path.relative_to(src.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], typing: bool) -> set[str]:
    """transfuse modules that ``path`` imports (``if TYPE_CHECKING:`` blocks only when ``typing``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not typing and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("transfuse"):
                for alias in child.names:
                    candidate = f"{child.module}.{alias.name}"
                    found.add(candidate if candidate in modules else child.module)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("transfuse"))
            visit(child)

    visit(tree)
    return found & modules


def _graph(typing: bool = False, src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the transfuse modules it imports; ``typing`` counts imports made for type hints only, which
    still tie two modules' designs together."""
    files = {_module_name(p, src): p for p in src.rglob("*.py")}
    graph = {name: _imports(path, set(files), typing) for name, path in files.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them (then they are
    # already being initialised, and Python does not enter them again)
    for name, targets in graph.items():
        own = set(_parents(name)) | {name}
        targets |= {p for t in list(targets) for p in _parents(t) if p in graph and p not in own}
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles found by a depth-first walk (each as the modules along it)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    return found


def test_the_import_graph_has_no_circle():
    assert not cycles(_graph(typing=True)), f"import circles: {cycles(_graph(typing=True))[:5]}"


def test_the_circle_check_finds_a_circle(tmp_path):
    package = tmp_path / "transfuse"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from transfuse.b import thing\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from transfuse.a import x\n"
    )
    assert cycles(_graph(typing=True, src=package)) == [["transfuse.a", "transfuse.b", "transfuse.a"]]
    assert cycles(_graph(typing=False, src=package)) == []


def test_no_entry_point_imports_another():
    graph = _graph()
    for entry in ENTRY_POINTS:
        reached, todo = set(), [entry]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in reached:
                    reached.add(nxt)
                    todo.append(nxt)
        assert not (reached & (ENTRY_POINTS - {entry})), f"{entry} imports {reached & (ENTRY_POINTS - {entry})}"


def test_the_light_modules_import_no_torch():
    graph = _graph()
    for light in ("transfuse.tracking.query", "transfuse.tracking.store", "transfuse.report.query"):
        reached, todo = {light}, [light]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in reached:
                    reached.add(nxt)
                    todo.append(nxt)
        heavy = {
            m for m in reached if m.startswith(("transfuse.models", "transfuse.weights", "transfuse.tracking.run"))
        }
        assert not heavy, f"{light} reaches {heavy}"
        for module in reached:
            text = (SRC.parent / Path(*module.split("."))).with_suffix(".py")
            source = text.read_text() if text.exists() else (text.with_suffix("") / "__init__.py").read_text()
            assert "\nimport torch" not in source and "\nfrom torch" not in source, module


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_a_distilled_student_gets_the_strategy_penalty(tmp_path, alpha):
    """finetune=l2_sp on a distilled student: the loss is the distillation loss plus alpha/2 * ||w - w0||^2."""
    cfg = compose_config(
        "fuse",
        [
            "data=synthetic",
            "backbone=test_resnet",
            "fusion_method=distill",
            "finetune=l2_sp",
            "finetune.beta=0",
            f"finetune.alpha={alpha}",
            f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        tmp_path / "out",
    )
    torch.manual_seed(0)
    teacher_logits = torch.randn(8, 4)
    student = build_model(cfg, ["a", "b", "c", "d"], teacher=lambda raw: teacher_logits, temperature=4.0, alpha=0.5)
    student.input_transform = BatchTransform(32, 3, [0.5], [0.5])
    student.finetune.snapshot(student)  # w0: the weights as fit would start from them
    with torch.no_grad():
        for p in student.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pull = sum(((p - student.finetune.source[n]) ** 2).sum() for n, p in student.backbone.named_parameters())
    raw, labels = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 2, 3] * 2)
    loss = student.training_step((raw, labels), 0)
    student.finetune.alpha = 0.0
    without = student.training_step((raw, labels), 0)
    torch.testing.assert_close(loss - without, 0.5 * alpha * pull.detach(), rtol=1e-4, atol=1e-6)
    if alpha:
        assert float(loss - without) > 0


def test_hydra_wrapped_input_errors_are_unwrapped():
    cause = ConfigError("timm has no model named 'nope'")
    try:
        try:
            raise cause
        except ConfigError as err:
            raise InstantiationException("Error in call to target 'TimmBackbone'") from err
    except InstantiationException as wrapped:
        assert input_error(wrapped) is cause
    assert input_error(InstantiationException("a bug")) is None
    assert input_error(RuntimeError("a bug")) is None
