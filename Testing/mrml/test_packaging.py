"""The extension as Slicer builds and installs it (issue #15): the top-level CMakeLists.txt configured, built and
installed with Slicer's and CTK's own scripted-module macros (../shared/slicer-cmake, verbatim) behind a minimal
Slicer_DIR written here. The module folder it installs must be complete (the module and its packages, the
.ui, icon and sample CT, models.json and every file it names, as they are in the source) and the module, the
core and the self-test's check must find them there. No compiler work: a scripted module is copied and
byte-compiled only."""
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import cmake
import pytest

from test_module_files import module  # noqa: F401  (the fixture that loads a module file with GUI stand-ins)

ROOT = Path(__file__).resolve().parents[2]
MACROS = ROOT.parent / "shared" / "slicer-cmake"
SCRIPTED = "lib/Slicer-5.8/qt-scripted-modules"  # Slicer_QTSCRIPTEDMODULES_LIB_DIR as a Slicer 5.8 build has it
CMAKE = Path(cmake.CMAKE_BIN_DIR) / "cmake"

# The variables the macros read (a real SlicerConfig.cmake sets many more), and a use-file that includes them.
SLICER_CONFIG = """set(Slicer_USE_PYTHONQT TRUE)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{scripted}")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "{scripted}")
set(CTK_CMAKE_DIR "{macros}")
set(PYTHONINTERP_FOUND TRUE)
set(PYTHON_EXECUTABLE "{python}")
set(PYTHONLIBS_FOUND TRUE)
set(PYTHON_LIBRARIES "{libpython}")
set(Slicer_USE_FILE "${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${{CMAKE_CURRENT_LIST_DIR}}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${{CMAKE_CURRENT_LIST_DIR}}/Nothing.cmake")
"""
USE_SLICER = """include(${CTK_CMAKE_DIR}/ctkMacroCompilePythonScript.cmake)
include(${CTK_CMAKE_DIR}/ctkFunctionExtractOptimizedLibrary.cmake)
include(${CTK_CMAKE_DIR}/SlicerMacroBuildScriptedModule.cmake)
"""


def write_slicer_dir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    libpython = Path(sysconfig.get_config_var("LIBDIR") or sys.prefix) / (sysconfig.get_config_var("LDLIBRARY") or "")
    (folder / "SlicerConfig.cmake").write_text(SLICER_CONFIG.format(
        scripted=SCRIPTED, macros=MACROS.as_posix(), python=Path(sys.executable).as_posix(),
        libpython=libpython.as_posix()), encoding="utf-8")
    (folder / "UseSlicer.cmake").write_text(USE_SLICER, encoding="utf-8")
    (folder / "Nothing.cmake").write_text("", encoding="utf-8")  # extension config and CPack: not tested here
    return folder


@pytest.fixture(scope="module")
def extension(tmp_path_factory):
    """Configure, build, install: the build tree's and the installed module folders."""
    if not (MACROS / "SlicerMacroBuildScriptedModule.cmake").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"Slicer's CMake macros not found at {MACROS}")
        pytest.skip(f"Slicer's CMake macros not found at {MACROS} (expected the repository's sibling shared/)")
    tmp = tmp_path_factory.mktemp("extension")
    slicer_dir, build, prefix = write_slicer_dir(tmp / "Slicer"), tmp / "build", tmp / "install"
    for step in ([CMAKE, "-S", ROOT, "-B", build, f"-DSlicer_DIR={slicer_dir}"], [CMAKE, "--build", build],
                 [CMAKE, "--install", build, "--prefix", prefix]):
        out = subprocess.run([str(a) for a in step], capture_output=True, text=True)
        assert out.returncode == 0, f"{step[1:3]}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return SimpleNamespace(build=build / SCRIPTED, installed=prefix / SCRIPTED)


def files_under(folder: Path) -> set:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_the_installed_module_folder_is_complete(extension):
    source_module = ROOT / "KidneyTumorSeg"
    expected = {"KidneyTumorSeg.py"} | {f"{package}/{p}" for package in ("KidneyTumorSegSlicer", "KidneyTumorSegLib")
                                         for p in files_under(source_module / package) if p.endswith(".py")}
    expected |= {f"Resources/{p}" for p in files_under(ROOT / "Resources")}
    installed = files_under(extension.installed)
    python = {p for p in installed if p.endswith(".py")}
    assert installed - {p + "c" for p in python} == expected  # and nothing but byte-compiled files besides
    assert {p[:-1] for p in installed if p.endswith(".pyc")} == python  # the macros compiled every file
    for rel in expected:
        source = source_module / rel if not rel.startswith("Resources/") else ROOT / rel
        assert (extension.installed / rel).read_bytes() == source.read_bytes(), rel
    for rel in ("Resources/UI/KidneyTumorSeg.ui", "Resources/Icons/KidneyTumorSeg.png",
                "Resources/SampleData/KidneyTumorSegSampleCT.nii.gz", "Resources/Models/models.json"):
        assert rel in installed, rel
    assert files_under(extension.build) == installed  # the build tree runs as it is, too


def test_only_the_module_is_at_the_top_of_the_installed_folder(extension):
    """Slicer loads each .py at the top of a module path as a module: the helpers are packages."""
    top = extension.installed
    assert sorted(p.name for p in top.iterdir() if p.is_file()) == ["KidneyTumorSeg.py", "KidneyTumorSeg.pyc"]
    assert sorted(p.name for p in top.iterdir() if p.is_dir()) == ["KidneyTumorSegLib", "KidneyTumorSegSlicer",
                                                                   "Resources"]


def test_every_file_models_json_names_is_installed_intact(extension):
    registry = extension.installed / "Resources" / "Models" / "models.json"
    data = json.loads(registry.read_text(encoding="utf-8"))
    assert data["default"] in data["models"]
    for name, entry in data["models"].items():
        for stage in ("stage1", "stage2"):
            path = registry.parent / entry[stage]["file"]
            assert path.is_file(), (name, stage, path)
            assert path.stat().st_size == entry[stage]["size_bytes"], (name, stage)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == entry[stage]["sha256"], (name, stage)


def test_the_module_finds_its_resources_in_the_installed_tree(extension, module, monkeypatch):  # noqa: F811
    installed = extension.installed
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # leave the installed tree as installed
    m = module(installed / "KidneyTumorSeg.py", "KidneyTumorSeg_installed")
    for rel in ("UI/KidneyTumorSeg.ui", "Icons/KidneyTumorSeg.png"):
        assert Path(m.resourcePath(rel)) == installed / "Resources" / rel
    assert Path(m.sampleDataPath()) == installed / "Resources" / "SampleData" / m.SAMPLE_FILE


def test_the_core_and_the_self_test_find_the_installed_models(extension):
    """A Python that sees only the installed folder (as PythonSlicer does, with Slicer's module paths):
    the core's registry, the default model (verified), the sample CT and the self-test's check."""
    installed = extension.installed
    code = """
import json
import KidneyTumorSegLib, KidneyTumorSegSlicer
from KidneyTumorSegLib.models import registry_path, resolve_model
from KidneyTumorSegLib.sample import sample_ct_path
from KidneyTumorSegSlicer.logic import KidneyTumorSegMRMLLogic
files = resolve_model("default")
print(json.dumps({"paths": [KidneyTumorSegLib.__file__, KidneyTumorSegSlicer.__file__, str(registry_path()),
                            str(files.stage1), str(files.stage2), str(sample_ct_path()),
                            KidneyTumorSegMRMLLogic().checkSelfTestInputs()],
                  "names": KidneyTumorSegMRMLLogic.modelNames()}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KIDNEYTUMORSEG_RESOURCES")}
    env.update(PYTHONPATH=str(installed), PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=installed, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(Path(p).is_relative_to(installed) for p in found["paths"]), found["paths"]
    registry = json.loads((installed / "Resources" / "Models" / "models.json").read_text(encoding="utf-8"))
    assert found["names"] == ["default"] + sorted(registry["models"])
