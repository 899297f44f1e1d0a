"""Imports point one way: flows -> tasks -> components. components must import with prefect and mlflow gone."""
import subprocess
import sys
from pathlib import Path

CODE = """
import importlib, pkgutil, sys
sys.modules['prefect'] = None
sys.modules['mlflow'] = None
import components
names = [m.name for m in pkgutil.walk_packages(components.__path__, 'components.')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_components_never_import_prefect_or_mlflow():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         cwd=Path(__file__).parents[2], timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) > 15


def _imports(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_flows_call_tasks_and_tasks_do_not_call_flows():
    root = Path(__file__).parents[2]
    for path in (root / "flows").glob("*.py"):
        ml = {n for n in _imports(path) if n.startswith("components.") and not n.startswith("components.config")}
        assert not ml, f"{path.name} imports ML code directly: {ml}"
        assert not {n for n in _imports(path) if n.split(".")[0] in ("torch", "transformers", "deepspeed", "mlflow")}
    for path in (root / "tasks").glob("*.py"):
        assert not {n for n in _imports(path) if n.startswith("flows")}, path.name
