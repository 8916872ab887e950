"""The imports follow ARCHITECTURE.md: a stage package uses the foundation, `model` and `data`, and
another stage only through the public module named here. A new import across the lines fails here
(update ARCHITECTURE.md and this table together when the design changes)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunelab"

FOUNDATION = {"errors", "config", "rundir", "progress", "plots"}
STAGE_BASE = FOUNDATION | {"model", "data"}
ALLOWED = {
    "errors": set(),
    "rundir": {"errors"},
    "config": {"errors", "rundir"},
    "progress": set(),
    "plots": {"rundir"},
    "model": {"errors", "config", "rundir"},
    "data": FOUNDATION | {"model"},
    "train": STAGE_BASE,
    "evaluate": STAGE_BASE,
    # A search trial trains a model (tracked like any training) and scores it on validation rows.
    "search": STAGE_BASE | {"train.trainer", "train.callbacks", "train.tracking", "evaluate.validation"},
    # Publishing asks the downloaded model the test prompts and prints the metrics table.
    "publish": STAGE_BASE | {"evaluate.replay", "evaluate.scoring"},
    # An export is checked the way a push is: the exported copy must give the evaluation's answers.
    "export": STAGE_BASE | {"evaluate.replay", "evaluate.scoring"},
    # The server answers as the evaluation does: its generation and label constraint.
    "serve": STAGE_BASE | {"evaluate.generation", "evaluate.constrain", "evaluate.label_scores"},
    "report": {"rundir", "data.prepare", "evaluate.scoring"},
    "demo": set(),
    "pipeline": STAGE_BASE | {"train", "evaluate", "search", "publish", "export", "serve", "report"},
    "cli": {"errors", "config", "rundir", "pipeline", "report", "demo", "data.prepare", "evaluate.scoring",
            "evaluate.ask", "evaluate.stage"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """Dotted names under tunelab that a module imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab."):
            found.add(node.module.removeprefix("tunelab."))
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("tunelab.") for alias in node.names if alias.name.startswith("tunelab.")}
    return found


def test_every_import_across_packages_is_one_the_architecture_allows():
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        assert owner in ALLOWED, f"{path.relative_to(PACKAGE)}: package '{owner}' is not in ARCHITECTURE.md"
        for target in _imports(path):
            package = target.split(".")[0]
            if package == owner:
                continue
            if package not in ALLOWED[owner] and target not in ALLOWED[owner]:
                crossings.append(f"{path.relative_to(PACKAGE)} imports tunelab.{target}")
    assert not crossings, "\n".join(crossings)


def test_architecture_md_names_every_package():
    text = (PACKAGE.parents[1] / "ARCHITECTURE.md").read_text()
    missing = [name for name in ALLOWED if name not in ("__main__", "__init__") and f"`{name}" not in text]
    assert not missing, missing
