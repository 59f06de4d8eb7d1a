"""The Slicer module file and its .ui, checked without the Slicer application: every widget the module uses
exists in the .ui, the files compile, the module imports cleanly (with stand-ins for the GUI-only modules),
and its resources are found both in a source checkout and in an installed extension."""
import ast
import importlib.util
import py_compile
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "KidneyTumorSeg"
MODULE_FILE = MODULE_DIR / "KidneyTumorSeg.py"
UI_FILE = ROOT / "Resources" / "UI" / "KidneyTumorSeg.ui"
EXPECTED_CLASSES = {
    "KidneyTumorSeg": "qMRMLWidget", "inputsCollapsibleButton": "ctkCollapsibleButton",
    "inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
    "modelCollapsibleButton": "ctkCollapsibleButton", "modelComboBox": "QComboBox",
    "deviceComboBox": "QComboBox", "modeComboBox": "QComboBox", "measurementsCheckBox": "QCheckBox",
    "applyButton": "QPushButton", "cancelButton": "QPushButton", "exportSurfacesButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel", "logCollapsibleButton": "ctkCollapsibleButton", "logTextEdit": "QPlainTextEdit",
}

# Minimal stand-ins for what only the Slicer application provides; slicer, slicer.util and vtk are the real
# slicer-core ones, and slicer.app does not exist, so touching the application at import time fails.
STUBS = '''
import sys, types
def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m
class _Any:
    def __init__(self, *a, **k): pass
class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()  # as Slicer's: cooperative, so the MRML logic's __init__ runs in the mix-in too
        self.moduleName = type(self).__name__[:-len("Logic")]
    def getParameterNode(self):
        return None
_module("qt", QTimer=_Any, QUrl=_Any)
_module("ctk")
_module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=_Any, ScriptedLoadableModuleWidget=_Any,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest=_Any)
class Choice:
    def __init__(self, choices):
        self.choices = choices
_module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls, Choice=Choice)
'''


def _load(path: Path, name: str):
    exec(STUBS, {})
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def module():
    names = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
    saved = {n: sys.modules.get(n) for n in names}
    yield lambda path=MODULE_FILE, name="KidneyTumorSeg_under_test": _load(path, name)
    for n, m in saved.items():  # the stand-ins must not leak into other tests
        if m is None:
            sys.modules.pop(n, None)
        else:
            sys.modules[n] = m


def _ui_widgets(path=UI_FILE):
    root = ET.parse(path).getroot()
    return root, {w.get("name"): w for w in root.iter("widget")}


def test_both_module_files_compile(tmp_path):
    for name in ("KidneyTumorSeg.py", "KidneyTumorSegMRML.py"):
        py_compile.compile(str(MODULE_DIR / name), cfile=str(tmp_path / (name + "c")), doraise=True)


def test_ui_is_valid_xml_with_the_expected_widgets():
    root, widgets = _ui_widgets()
    assert root.tag == "ui" and root.find("widget").get("class") == "qMRMLWidget"
    assert {n: widgets[n].get("class") for n in EXPECTED_CLASSES if n in widgets} == EXPECTED_CLASSES
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    custom = {w.get("class") for w in widgets.values() if w.get("class")[0] in "qc"}
    assert custom <= declared

    def prop(widget, name):
        p = widgets[widget].find(f"property[@name='{name}']")
        return None if p is None else "".join(p.itertext()).strip()
    assert prop("inputVolumeSelector", "nodeTypes") == "vtkMRMLScalarVolumeNode"
    assert prop("outputSegmentationSelector", "nodeTypes") == "vtkMRMLSegmentationNode"
    for flag in ("noneEnabled", "addEnabled", "renameEnabled"):
        assert prop("outputSegmentationSelector", flag) == "true", flag
    assert prop("logCollapsibleButton", "collapsed") == "true"
    assert [i.findtext("property/string") for i in widgets["deviceComboBox"].findall("item")] == [
        "auto", "cpu", "cuda"]
    assert [i.findtext("property/string") for i in widgets["modeComboBox"].findall("item")] == [
        "fast", "default", "accurate"]


def test_every_widget_the_module_uses_is_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module uses no widgets?"
    assert sorted(used - set(_ui_widgets()[1])) == []


def test_parameter_names_in_the_ui_match_the_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KidneyTumorSegParameterNode")
    fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    assert fields == {"inputVolume", "outputSegmentation", "model", "device", "mode", "computeMeasurements"}
    root = ET.parse(UI_FILE).getroot()
    bound = {"".join(p.itertext()).strip() for p in root.iter("property")
             if p.get("name") == "SlicerParameterName"}
    # The model combo box is editable (a folder may be typed), so the widget binds it by hand.
    assert bound == fields - {"model"}
    assert "modelComboBox" in re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8"))


def test_module_imports_cleanly_with_slicer_stand_ins(module):
    m = module()
    assert m.KidneyTumorSegParameterNode.__annotations__["inputVolume"].__name__ == "vtkMRMLScalarVolumeNode"
    annotations = m.KidneyTumorSegParameterNode.__annotations__
    assert annotations["outputSegmentation"].__name__ == "vtkMRMLSegmentationNode"
    # connectGui binds a QComboBox to a str only through a Choice annotation (Slicer's guiConnectors).
    assert annotations["device"].__metadata__[0].choices == ["auto", "cpu", "cuda"]
    assert annotations["mode"].__metadata__[0].choices == ["fast", "default", "accurate"]
    logic = m.KidneyTumorSegLogic()
    assert logic.moduleName == "KidneyTumorSeg"  # the parameter node's singleton tag
    assert callable(logic.segment) and callable(logic.start) and callable(logic.cancel)
    assert isinstance(m.KidneyTumorSegLogic.modelNames(), list)
    for cls in ("KidneyTumorSeg", "KidneyTumorSegWidget", "KidneyTumorSegTest"):
        assert hasattr(m, cls)


def test_importing_the_module_loads_no_heavy_dependency():
    """Slicer loads the module before torch is installed: the core is imported only when used."""
    code = (STUBS + "import importlib.util as u\n"
            f"s = u.spec_from_file_location('KTS', {str(MODULE_FILE)!r}); m = u.module_from_spec(s)\n"
            "s.loader.exec_module(m)\n"
            "print(sorted({'torch', 'scipy', 'SimpleITK'} & {n.split('.')[0] for n in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=MODULE_DIR)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_resource_path_in_source_checkout(module):
    m = module()
    assert Path(m.resourcePath("UI/KidneyTumorSeg.ui")) == UI_FILE
    assert Path(m.resourcePath("Icons/KidneyTumorSeg.png")).is_file()


@pytest.mark.parametrize("resources", ["qt-scripted-modules/Resources", "Resources"])
def test_resource_path_in_installed_extension(module, tmp_path, resources):
    # Slicer installs a scripted module as <lib>/qt-scripted-modules/KidneyTumorSeg.py with its resources in
    # <lib>/qt-scripted-modules/Resources/; resources listed as "../Resources/..." in CMake land one folder up.
    lib = tmp_path / "lib" / "Slicer-5.8"
    (lib / "qt-scripted-modules").mkdir(parents=True)
    (lib / resources / "UI").mkdir(parents=True, exist_ok=True)
    shutil.copy(MODULE_FILE, lib / "qt-scripted-modules" / "KidneyTumorSeg.py")
    shutil.copy(UI_FILE, lib / resources / "UI" / "KidneyTumorSeg.ui")
    m = module(lib / "qt-scripted-modules" / "KidneyTumorSeg.py", "KidneyTumorSeg_installed")
    assert Path(m.resourcePath("UI/KidneyTumorSeg.ui")) == lib / resources / "UI" / "KidneyTumorSeg.ui"
    assert m.sampleDataPath() is None  # none installed here: registration is skipped, not failed


def test_shipped_sample_ct_matches_its_recorded_checksum(module):
    import hashlib
    m = module(MODULE_FILE, "KidneyTumorSeg_sample")
    path = Path(m.sampleDataPath())
    assert path.name == m.SAMPLE_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m.SAMPLE_SHA256
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    assert m.SAMPLE_SHA256 in readme and "Apache License 2.0" in readme
