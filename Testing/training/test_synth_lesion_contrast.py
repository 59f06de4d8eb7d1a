"""--lesion-contrast: an enhanced case's tumor is moved off the cortex (synth_phases.separate_enhanced_tumor)."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from training.synth_phases import ENHANCED_TUMOR_CONTRAST, MIN_LESION_CONTRAST, MOVED_TUMOR_MIN_HU, \
    draw_appearance, scale_enhancement, separate_enhanced_tumor
from synth_one_case import generate_case


@pytest.mark.parametrize("dose", [False, True])
def test_an_enhanced_tumor_near_the_cortex_is_moved_below_it_and_nothing_else_changes(dose):
    """Also after --contrast-dose, which can bring the cortex down to about 87 HU: the floor then holds."""
    low, high = ENHANCED_TUMOR_CONTRAST
    moved = kept = 0
    for seed in range(400):
        phase, randomised, hu = draw_appearance(np.random.default_rng(seed))
        if dose:
            hu = scale_enhancement(hu, phase, randomised, np.random.default_rng(seed + 500))[0]
        before = dict(hu)
        out = separate_enhanced_tumor(hu, phase, randomised, np.random.default_rng(seed + 1000))
        assert hu == before  # the input dict is not modified
        if phase == "unenhanced" or randomised:
            assert out == hu
            continue
        assert abs(out["tumor"] - out["cortex"]) >= low
        if abs(hu["tumor"] - hu["cortex"]) >= low:
            assert out == hu
            kept += 1
        else:
            assert out["tumor"] >= MOVED_TUMOR_MIN_HU
            assert low <= out["cortex"] - out["tumor"] <= high or out["tumor"] == MOVED_TUMOR_MIN_HU
            moved += 1
        assert out["cyst"] <= min(out["cortex"], out["tumor"]) - MIN_LESION_CONTRAST + 1e-9
        assert {k: v for k, v in out.items() if k not in ("tumor", "cyst")} == \
            {k: v for k, v in hu.items() if k not in ("tumor", "cyst")}
    assert moved > 20 and kept > 20  # both branches were exercised


def _read(d, name):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(d / name)))


def test_with_the_option_only_a_moved_tumors_voxels_change(shared_data, tmp_path):
    """The case made with the option has the labels and anatomy of the case made without it. A case whose tumor
    was not moved is byte-identical; one whose tumor was moved (an enhanced case) differs only within the blur's
    reach of its lesions, and its tumor is darker (by as little as it had to move)."""
    seen = {}
    for seed in range(13, 60):
        off, off_dir = generate_case(shared_data, tmp_path / f"{seed}_off", seed)
        on, on_dir = generate_case(shared_data, tmp_path / f"{seed}_on", seed, ["--lesion-contrast"])
        assert on["phase"] == off["phase"] and "tumor_moved" not in off
        kind = "moved" if on["tumor_moved"] else "kept"
        if kind in seen:
            continue
        for name in ("segmentation.nii.gz", "anatomy.nii.gz"):
            assert (on_dir / name).read_bytes() == (off_dir / name).read_bytes(), name
        ct_on, ct_off = _read(on_dir, "imaging.nii.gz"), _read(off_dir, "imaging.nii.gz")
        if kind == "kept":  # unenhanced, random intensities, or a tumor already 40 HU off the cortex
            assert (on_dir / "imaging.nii.gz").read_bytes() == (off_dir / "imaging.nii.gz").read_bytes()
        else:
            assert on["phase"] != "unenhanced" and not on["random_intensities"]
            labels = _read(on_dir, "segmentation.nii.gz")
            tumor = labels == 2
            # the blur's kernel reaches 4 voxels along each axis, so a box around the lesions
            near = ndimage.binary_dilation(labels >= 2, np.ones((3, 3, 3), bool), iterations=4)
            changed = ct_on != ct_off
            assert changed.any() and not (changed & ~near).any()
            assert (ct_on[tumor] <= ct_off[tumor]).all() and ct_on[tumor].mean() < ct_off[tumor].mean()
        seen[kind] = seed
        if len(seen) == 2:
            break
    assert set(seen) == {"kept", "moved"}
