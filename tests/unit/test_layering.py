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
