"""The Slicer module file and its .ui, checked without the Slicer application: every widget the module uses
exists in the .ui, the files compile, the module imports cleanly (with stand-ins for the GUI-only modules),
its resources are found in a source checkout (Testing/mrml/test_packaging.py: in an installed extension), and
its self-test fails when no model is installed."""
import ast
import importlib.util
import json
import os
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
# slicer-core ones, and slicer.app does not exist, so touching the application at import time fails. The
# test base class is a unittest.TestCase, as Slicer's is, so the module's self-test runs here too.
STUBS = '''
import sys, types, unittest
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
class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        print(message)
_module("qt", QTimer=_Any, QUrl=_Any)
_module("ctk")
_module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=_Any, ScriptedLoadableModuleWidget=_Any,
        ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
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


def test_the_module_and_its_slicer_layer_compile(tmp_path):
    files = [MODULE_FILE] + sorted((MODULE_DIR / "KidneyTumorSegSlicer").glob("*.py"))
    assert len(files) >= 6
    for path in files:
        py_compile.compile(str(path), cfile=str(tmp_path / (path.name + "c")), doraise=True)


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


def test_the_widgets_are_bound_by_their_parameter_names_with_a_tag_to_unbind_them(module):
    """parameterWidgets finds what connectGui would (the "SlicerParameterName" property) for
    connectParametersToGui, which returns the tag disconnectGui needs on every Slicer from 5.4 on."""
    class Widget:
        def __init__(self, name=None):
            self.name = name

        def property(self, key):
            return self.name if key == "SlicerParameterName" else None

    ui = type("UI", (), {})()
    ui.deviceComboBox, ui.modeComboBox, ui.applyButton = Widget("device"), Widget("mode"), Widget()
    ui.note = "not a widget"
    assert module().parameterWidgets(ui) == {"device": ui.deviceComboBox, "mode": ui.modeComboBox}
    text = MODULE_FILE.read_text(encoding="utf-8")
    assert ".connectGui(" not in text and "connectParametersToGui(parameterWidgets(self.ui))" in text


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


def run_self_test(module_folder: Path) -> subprocess.CompletedProcess:
    """The module's self-test (KidneyTumorSegTest.runTest) in a fresh Python that sees only ``module_folder``
    (as Slicer's module path), on a slicer-core scene; prints its failures and errors as JSON."""
    code = STUBS + f"""
import importlib.util, json, unittest
import slicer
slicer.mrmlScene = slicer.vtkMRMLScene()
s = importlib.util.spec_from_file_location("KidneyTumorSeg", {str(module_folder / "KidneyTumorSeg.py")!r})
m = importlib.util.module_from_spec(s)
s.loader.exec_module(m)
import KidneyTumorSegLib
result = unittest.TestResult()
m.KidneyTumorSegTest("runTest").run(result)
print(json.dumps({{"library": KidneyTumorSegLib.__file__, "run": result.testsRun,
                  "failures": [text for _, text in result.failures], "errors": [t for _, t in result.errors]}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KIDNEYTUMORSEG_RESOURCES")}
    env["PYTHONPATH"] = str(module_folder)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=module_folder, env=env)


def test_self_test_fails_when_no_model_is_installed(tmp_path):
    """An extension installed without its models: the module, its packages and Resources/ without Models/."""
    folder = tmp_path / "qt-scripted-modules"
    shutil.copytree(MODULE_DIR, folder, ignore=shutil.ignore_patterns("__pycache__", "CMakeLists.txt"))
    shutil.copytree(ROOT / "Resources", folder / "Resources", ignore=shutil.ignore_patterns("Models"))
    out = run_self_test(folder)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["library"]).is_relative_to(folder)  # this copy's core, not the checkout's
    assert result["run"] == 1 and result["errors"] == [] and len(result["failures"]) == 1
    failure = result["failures"][0]
    assert "The self-test cannot run: No model named 'default': no model registry" in failure
    assert "sample CT" not in failure  # the sample is installed: only the model is named


def test_shipped_sample_ct_matches_its_recorded_checksum(module):
    import hashlib
    m = module(MODULE_FILE, "KidneyTumorSeg_sample")
    path = Path(m.sampleDataPath())
    assert path.name == m.SAMPLE_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m.SAMPLE_SHA256
    readme = (path.parent / "README.md").read_text(encoding="utf-8")
    assert m.SAMPLE_SHA256 in readme and "Apache License 2.0" in readme
