"""The loose-lesion rule: a predicted tumor/cyst that only grazes the kidney is dropped, a real one stays. Phantoms
with known contact, and real KiTS23 ground truth (which the rule's threshold must leave whole)."""
import numpy as np
import pytest

from KidneyTumorSegLib.image_io import read_labelmap
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.lesion_contact import lesion_contacts
from KidneyTumorSegLib.postprocessing import PostprocessingConfig, postprocess

K, T, C = int(Label.KIDNEY), int(Label.TUMOR), int(Label.CYST)
SPACING = (1.0, 1.0, 1.0)
RULE = PostprocessingConfig()  # the default: min_lesion_contact 0.04


def _ball(shape, centre, r):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r


def _phantom():
    """A kidney (a 120 x 40 x 40 mm block, 192 mL) with an exophytic tumor half in it, and a 14 mm "cyst"
    ball (1.4 mL) joined to its front face by a one-voxel bridge: a bowel loop lying against it."""
    lab = np.zeros((60, 70, 160), np.uint8)
    lab[10:50, 10:50, 20:140] = K
    tumor = _ball(lab.shape, (30, 30, 140), 12)
    lab[tumor] = T
    graze = _ball(lab.shape, (30, 62, 60), 7)  # y 55-69, in front of the kidney (which ends at y = 49)
    graze[30, 50:55, 60] = True  # joined to it by a one-voxel bridge
    lab[graze] = C
    return lab, tumor, graze


def test_contact_is_the_kidney_share_of_the_shell():
    lab, tumor, graze = _phantom()
    shares = sorted(share for _, _, share in lesion_contacts(lab, np.ones((3, 3, 3), bool)))
    assert len(shares) == 2
    assert shares[0] < 0.01           # the grazing cyst: one voxel of its shell is kidney
    assert 0.35 < shares[1] < 0.65    # the half-buried tumor: about half


def test_a_grazing_lesion_is_removed_and_a_real_one_stays():
    lab, tumor, graze = _phantom()
    out, report = postprocess(lab, SPACING, RULE, return_report=True)
    assert not np.any(out[graze]) and np.all(out[tumor] == T)
    assert report.changed["loose_lesion"] == int(graze.sum())
    assert [r for r, _ in report.removed_components] == ["loose_lesion"]
    # Off, and below the size limit, nothing changes.
    assert RULE.min_lesion_contact == 0.04
    assert np.array_equal(postprocess(lab, SPACING, PostprocessingConfig(min_lesion_contact=0.0)), lab)
    small = PostprocessingConfig(min_lesion_contact=0.04, loose_lesion_min_mm3=2000.0)
    assert np.array_equal(postprocess(lab, SPACING, small), lab)
    # The input is never modified.
    assert np.array_equal(lab, _phantom()[0])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="min_lesion_contact"):
        PostprocessingConfig(min_lesion_contact=1.5)
    with pytest.raises(ValueError, match="loose_lesion_min_mm3"):
        PostprocessingConfig(min_lesion_contact=0.1, loose_lesion_min_mm3=-1)


@pytest.mark.parametrize("case", ["case_00545", "case_00516", "case_00430", "case_00058", "case_00275", "case_00000"])
def test_kits23_ground_truth_loses_no_lesion(shared_data, case):
    """The cases with the least kidney around a lesion in all of KiTS23 (case_00545: 5.4 %) keep every lesion."""
    lab = read_labelmap(shared_data / "kits23" / "labels" / f"{case}.nii.gz")
    out, report = postprocess(lab.array, lab.geometry.spacing, RULE, return_report=True)
    assert report.changed["loose_lesion"] == 0
    assert np.count_nonzero(np.isin(out, (T, C))) >= 0.99 * np.count_nonzero(np.isin(lab.array, (T, C)))
