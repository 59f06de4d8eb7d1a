"""The fixture of the fault tests: a small CT and the complete set of outputs of an earlier run."""
import os

import pytest

from KidneyTumorSegLib import cli
from faults_common import ALL_OUTPUTS, SET
from phantoms import write_small_ct


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, model_dir):
    """A small CT and a folder holding the complete set of outputs of an earlier run."""
    root = tmp_path_factory.mktemp("faults")
    ct = root / "ct.nii.gz"
    write_small_ct(ct)
    out = root / "earlier"
    assert cli.main(["segment", str(ct), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     *ALL_OUTPUTS]) == 0
    assert sorted(os.listdir(out)) == SET
    return ct, out

