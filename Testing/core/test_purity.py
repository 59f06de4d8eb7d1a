"""The core library stays free of Slicer, Qt, CTK and VTK, so it runs in the CLI, training and tests."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import KidneyTumorSegLib

FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "mrml", "slicer_core"}
LIB = Path(KidneyTumorSegLib.__file__).parent


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_forbidden_import_statements():
    files = sorted(LIB.rglob("*.py"))
    assert len(files) >= 6
    offenders = {str(f.relative_to(LIB)): sorted(_imported_roots(f) & FORBIDDEN) for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_module_loads_none_of_them():
    modules = [".".join(("KidneyTumorSegLib",) + f.relative_to(LIB).with_suffix("").parts)
               for f in sorted(LIB.rglob("*.py"))]
    modules = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in modules]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted({{n.split('.')[0] for n in sys.modules}} & set({sorted(FORBIDDEN)!r})))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LIB.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


def test_the_model_registry_reads_without_numpy_simpleitk_or_torch():
    """The Slicer panel lists and checks models before the extension's dependencies may be installed."""
    code = ("import sys, KidneyTumorSegLib.models\n"
            "print(sorted(m for m in ('numpy', 'SimpleITK', 'scipy', 'torch') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LIB.parent), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
