"""One license statement for the code (Apache-2.0) everywhere it is made; the weights' own licenses apart."""
import re
import subprocess
from pathlib import Path

from training import export

ROOT = Path(__file__).resolve().parents[2]
# Written by the last export, before the code license was separated; the next export rewrites them.
KNOWN_OLD: set = set()


def test_license_file_is_the_apache_license_2_0():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text


def test_readme_pyproject_export_and_slicer_module_say_apache_2_0():
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "Code: Apache-2.0 (`LICENSE`)" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "the code is Apache-2.0" in (ROOT / "KidneyTumorSeg" / "KidneyTumorSeg.py").read_text(encoding="utf-8")
    assert export.CODE_LICENSE == "Apache-2.0"


def test_no_file_calls_the_code_mit():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout: every file
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    claims = re.compile(r"code( is)? MIT")
    found = [f for f in files if f not in KNOWN_OLD and f.endswith((".py", ".md", ".json", ".toml", ".txt"))
             and claims.search((ROOT / f).read_text(encoding="utf-8", errors="replace"))]
    assert found == []
