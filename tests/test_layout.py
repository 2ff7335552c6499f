"""The layout the README promises: data flows one way down the pipeline, and no module is too big."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gradleak"
# Lower floors first; a module may import its own floor and the ones above it in this list.
FLOORS = ["errors", "registry", "runtime", "config_files", "config", "io", "viz", "data", "models", "defenses", "threat",
          "vision", "metrics", "attacks", "semantic", "studies", "experiments", "integrations", "cli", "__main__"]
MAX_LINES = 400


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            yield module, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield module, alias.name


def test_no_import_runs_back_up():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        for module, target in _imports(path):
            if not target.startswith("gradleak.") or module == "gradleak":
                continue
            mine, theirs = _floor(module), _floor(target)
            assert mine in FLOORS and theirs in FLOORS, (module, target)
            if FLOORS.index(theirs) > FLOORS.index(mine):
                upward.append(f"{module} imports {target}")
    assert not upward


def test_no_module_is_over_the_size_limit():
    big = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big
