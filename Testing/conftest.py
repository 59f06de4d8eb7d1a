"""Shared fixtures: the real test data folder and synthetic phantoms with arbitrary geometry."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

# Slicer puts a scripted module's folder on sys.path; do the same so tests import KidneyTumorSegSlicer etc.
# Testing/ itself goes there too, for the shared test inputs in phantoms.py.
MODULE_DIR = Path(__file__).resolve().parents[1] / "KidneyTumorSeg"
for folder in (MODULE_DIR, Path(__file__).resolve().parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from phantoms import ellipsoid_labels, phantom_ct, rotation  # noqa: E402  (needs the path above)

# The data lives beside the repository (../shared/data), not inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ct").is_dir():
        if os.environ.get("CI"):  # in CI the data is always laid beside the clone: missing means broken
            pytest.fail(f"shared test data not found at {SHARED_DATA}")
        pytest.skip(f"shared test data not found at {SHARED_DATA} (expected the repository's sibling shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def one_synthetic_case(shared_data, tmp_path_factory) -> Path:
    """A folder with one small synthetic case (KiTS23 case_00534, the smallest map, painted into AMOS 0013 at
    2.5-3 mm, seed 5) and its anatomy map: for tests of caches, samplers and negatives."""
    import shutil

    from training.synthetic import main as synthesize
    anatomy = tmp_path_factory.mktemp("anatomy")
    shutil.copytree(shared_data / "anatomy" / "amos", anatomy / "amos")
    out = tmp_path_factory.mktemp("synth")
    assert synthesize(["--kits23", str(shared_data / "kits23" / "labels"), "--anatomy", str(anatomy),
                       "--cases", "case_00534", "--seed", "5", "--spacing", "2.5", "3", "-o", str(out)]) == 0
    return out


@pytest.fixture
def synth():
    """The helpers above as a fixture (tests need not import conftest): synth.rotation, .labels, .ct."""
    return SimpleNamespace(rotation=rotation, labels=ellipsoid_labels, ct=phantom_ct)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A model folder with tiny random-weight networks: for tests about files, geometry, events and errors,
    not accuracy. Stage 1 says 'kidney' everywhere, so it boxes the whole (small) test CT."""
    import torch

    from KidneyTumorSegLib.checkpoint import save_checkpoint
    from KidneyTumorSegLib.networks import STAGE1_TINY, TINY, build_network
    from KidneyTumorSegLib.preprocessing import PreprocessingConfig
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    for name, net, cfg, labels, spacing in [
            ("stage1.pt", "residual_unet", STAGE1_TINY, ["background", "kidney"], (6.0, 6.0, 6.0)),
            ("stage2.pt", "improved_vnet", TINY, ["background", "kidney", "tumor", "cyst"], (5.0, 5.0, 5.0))]:
        model = build_network(net, cfg)
        if name == "stage1.pt":
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.copy_(torch.tensor([-5.0, 5.0]))
        save_checkpoint(folder / name, net, cfg, model, labels,
                        PreprocessingConfig(target_spacing=spacing), patch_size=(32, 32, 32))
    return folder
