"""An installed extension holds only the files CMake lists: every module .py must be there (the resources are
installed as a folder; Testing/mrml/test_packaging.py builds and installs the extension and checks it all)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "KidneyTumorSeg"


def _listed(variable: str) -> list:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return [line.strip().replace("${MODULE_NAME}", "KidneyTumorSeg") for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_every_module_python_file_is_listed():
    on_disk = sorted(str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)
    assert sorted(_listed("MODULE_PYTHON_SCRIPTS")) == on_disk


def test_no_resource_is_named_by_hand():
    """Resources/ is installed by a glob (a new model folder needs no CMake edit; Testing/mrml/test_packaging.py
    checks the installed tree against models.json), and never through the macro's RESOURCES with "../": those
    are copied outside the module folder that gets installed."""
    lines = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line.split("#", 1)[0] for line in lines)  # without the comments
    assert "RESOURCES ${" not in text and "../Resources/" not in text
    assert "file(GLOB_RECURSE MODULE_RESOURCES" in text
    models = sorted(p.name for p in (ROOT / "Resources" / "Models").iterdir())
    assert models and not any(name in text for name in models if name not in ("README.md",))


def test_extension_metadata_is_complete():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        value = re.search(rf'set\({key} "([^"]*)"\)', text)
        assert value and value.group(1).strip(), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert "add_subdirectory(KidneyTumorSeg)" in text


def test_extensions_index_entry_matches_the_cmake_metadata():
    import json
    entry = json.loads((ROOT / "KidneyTumorSeg.json").read_text(encoding="utf-8"))
    # The catalog schema (v1.0.1) has additionalProperties false and requires these three.
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_type", "scm_url", "tier"}
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in text
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', text).group(1).split()
    assert entry["build_dependencies"] == depends
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]*)"\)', text).group(1)
    assert entry["scm_url"].removesuffix(".git") == homepage


def test_self_test_is_registered_and_exists():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    source = (MODULE / "KidneyTumorSeg.py").read_text(encoding="utf-8")
    assert "class KidneyTumorSegTest(ScriptedLoadableModuleTest)" in source
