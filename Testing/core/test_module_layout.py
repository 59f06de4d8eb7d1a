"""The Slicer module folder's shape, read from the source (issue #15): only module files at its top (Slicer
loads each .py there as a module), one class per name, the Slicer layer in camelCase as Slicer's own modules
are, and the README's "In 3D Slicer" section naming only what the package holds."""
import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "KidneyTumorSeg"
SLICER_LAYER = [MODULE / "KidneyTumorSeg.py"] + sorted((MODULE / "KidneyTumorSegSlicer").glob("*.py"))
CAMEL = re.compile(r"^_{0,2}[a-z][a-zA-Z0-9]*$")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_only_modules_at_the_top_of_the_module_folder():
    """Each top-level .py defines a ScriptedLoadableModule subclass named as the file; helpers are packages."""
    top = sorted(MODULE.glob("*.py"))
    assert [p.name for p in top] == ["KidneyTumorSeg.py"]
    for path in top:
        modules = [c.name for c in _tree(path).body if isinstance(c, ast.ClassDef)
                   and any(getattr(b, "id", None) == "ScriptedLoadableModule" for b in c.bases)]
        assert modules == [path.stem]
    packages = sorted(p.parent.name for p in MODULE.glob("*/__init__.py"))
    assert packages == ["KidneyTumorSegLib", "KidneyTumorSegSlicer"]


def test_no_class_name_is_defined_twice():
    where = defaultdict(list)
    for path in sorted(MODULE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(MODULE)))
    assert {name: files for name, files in where.items() if len(files) > 1} == {}
    assert len(where["KidneyTumorSegLogic"]) == 1


def test_the_slicer_layer_is_camel_case():
    """Functions, methods, their parameters, variables and attributes (constants in CAPITALS; unittest's
    test_ methods as Slicer's own tests name them)."""
    offenders = []
    for path in SLICER_LAYER:
        for node in ast.walk(_tree(path)):
            names = []
            if isinstance(node, ast.FunctionDef):
                special = node.name.startswith("test_") or (node.name.startswith("__") and node.name.endswith("__"))
                names = [] if special else [node.name]
                names += [a.arg for a in node.args.args + node.args.kwonlyargs + [node.args.vararg, node.args.kwarg]
                          if a is not None]
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and not node.id.isupper():
                names = [node.id]
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names = [node.attr]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if not CAMEL.match(n) and n != "_"]
    assert offenders == []


def _defined_names() -> tuple:
    """(names of classes, functions, methods and attributes, their parameter names) in the Slicer layer."""
    names, parameters = set(), set()
    for path in SLICER_LAYER:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(node.name)
            if isinstance(node, ast.FunctionDef):
                parameters.update(a.arg for a in node.args.args + node.args.kwonlyargs)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):  # dataclass fields
                names.add(node.target.id)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):  # self.job, job.tableNode
                names.add(node.attr)
    return names, parameters


def test_readme_in_3d_slicer_names_only_what_the_package_holds():
    section = _readme_section("In 3D Slicer")
    names, parameters = _defined_names()
    calls = [span for span in re.findall(r"`([^`]+)`", section) if "(" in span or span.startswith("logic.")]
    assert any("KidneyTumorSegLogic()" in span for span in calls), "the scripting example is gone"
    for span in calls:
        tree = ast.parse(span)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr not in ("GetName",):
                assert node.attr in names, (span, node.attr)
            elif isinstance(node, ast.keyword):
                assert node.arg in parameters, (span, node.arg)
            elif isinstance(node, ast.Import):
                assert all((MODULE / f"{a.name}.py").is_file() for a in node.names), span
    for path in re.findall(r"`(KidneyTumorSeg[A-Za-z]*/)`", section):
        assert (MODULE / path).is_dir(), path
    # The parameter node's options, as the README lists them.
    assert "model, device (auto/CPU/GPU), mode (fast/default/accurate), measurements" in " ".join(section.split())
    source = (MODULE / "KidneyTumorSeg.py").read_text(encoding="utf-8")
    for field in ("model: str", 'Choice(["auto", "cpu", "cuda"])', 'Choice(["fast", "default", "accurate"])',
                  "computeMeasurements: bool"):
        assert field in source, field
