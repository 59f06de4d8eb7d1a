"""Shared fixtures: the real test data folder and synthetic phantoms with arbitrary geometry."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# Slicer puts a scripted module's folder on sys.path; do the same so tests import KidneyTumorSegMRML etc.
MODULE_DIR = Path(__file__).resolve().parents[1] / "KidneyTumorSeg"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

# The data lives beside the repository (../shared/data), not inside it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ct").is_dir():
        if os.environ.get("CI"):  # in CI the data is always laid beside the clone: missing means broken
            pytest.fail(f"shared test data not found at {SHARED_DATA}")
        pytest.skip(f"shared test data not found at {SHARED_DATA} (expected the repository's sibling shared/data)")
    return SHARED_DATA


def rotation(ax_deg: float, ay_deg: float, az_deg: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (degrees); used to build oblique direction matrices."""
    a, b, c = np.radians([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def ellipsoid_labels(shape=(24, 40, 36)) -> np.ndarray:
    """uint8 (z, y, x) label map with three ellipsoids (labels 1, 2, 3) defined in voxel coordinates."""
    z, y, x = np.indices(shape, dtype=float)
    s = np.asarray(shape, dtype=float)
    out = np.zeros(shape, np.uint8)
    for label, c, r in [(1, (0.5, 0.35, 0.3), (0.3, 0.22, 0.2)), (2, (0.45, 0.65, 0.7), (0.25, 0.2, 0.18)),
                        (3, (0.5, 0.35, 0.3), (0.12, 0.08, 0.08))]:
        cz, cy, cx = np.asarray(c) * s
        rz, ry, rx = np.asarray(r) * s
        out[((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1] = label
    return out


def phantom_ct(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 HU volume: air outside a body box, fat/soft-tissue inside, brighter 'organs' per label."""
    rng = np.random.default_rng(seed)
    ct = np.full(labels.shape, -1000.0, np.float32)
    ct[1:-1, 2:-2, 2:-2] = -80.0
    ct[labels > 0] = 30.0 + 60.0 * labels[labels > 0]
    return ct + rng.normal(0, 10, labels.shape).astype(np.float32)


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
