"""The bundled sample CT (``Resources/SampleData/``): a real, unenhanced abdomen-pelvis CT at 3 mm from the
TotalSegmentator test files (Apache-2.0; see Resources/SampleData/README.md). Used by ``kidney-tumor-seg
demo``, Slicer's Sample Data module and the Slicer self-test; its SHA-256 is checked before use."""
from __future__ import annotations

from pathlib import Path

from .download import sha256_file
from .errors import InputError
from .models import resource_dirs

SAMPLE_FILE = "KidneyTumorSegSampleCT.nii.gz"
SAMPLE_SHA256 = "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"
# Said after the demo's results: the shipped model calls "tumor" and "cyst" in the sample's right renal sinus, and a
# reader of a one-click demo takes a listed R.E.N.A.L. score for a finding.
SAMPLE_NOTE = ("Note: the sample CT has no known kidney tumor or cyst, so any listed above is most likely a false "
               "positive of the model (its figures on real CTs: Resources/Models/README.md). Check every result "
               "by eye.")


def sample_ct_path() -> Path:
    """The verified sample CT; a clear error when it is missing or damaged."""
    for d in resource_dirs():
        path = d / "SampleData" / SAMPLE_FILE
        if path.is_file():
            if sha256_file(path) != SAMPLE_SHA256:
                raise InputError(f"The sample CT {path} does not match its recorded SHA-256 (damaged or "
                                 "replaced); restore it from the repository (git checkout -- Resources).")
            return path
    raise InputError(f"The sample CT ({SAMPLE_FILE}) is not installed: it ships in Resources/SampleData/ of "
                     "a source checkout (pip install -e .) and of the Slicer extension.")
