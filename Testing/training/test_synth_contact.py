"""--organ-contact: the liver and spleen close the thin fat planes between them and a kidney (synth_contact)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from training.anatomy_maps import ANATOMY
from training.synth_contact import CONTACT_MM, CONTACT_P, close_fat_planes, organ_contact
from synth_one_case import generate_case

LIVER, SPLEEN, ADRENAL = ANATOMY["liver"], ANATOMY["spleen"], ANATOMY["adrenal_gland"]


def _slab_case(gap_voxels, shape=(12, 12, 40)):
    """Kidney (labels 1) at x < 10, fat (0) for ``gap_voxels``, liver beyond, on a 1 mm grid."""
    labels = np.zeros(shape, np.uint8)
    anatomy = np.zeros(shape, np.uint8)
    labels[:, :, :10] = 1
    anatomy[:, :, 10 + gap_voxels:30] = LIVER
    return anatomy, labels


def _adrenal_case(shape=(10, 30, 30)):
    """Kidney at y 10-19, x 10-19; on its +x side 2 voxels of fat, one of them (x 21) adrenal, then liver."""
    labels = np.zeros(shape, np.uint8)
    anatomy = np.zeros(shape, np.uint8)
    labels[:, 10:20, 10:20] = 1
    anatomy[:, 10:20, 22:28] = LIVER
    anatomy[:, 10:20, 21] = ADRENAL
    return anatomy, labels


@pytest.mark.parametrize("gap, width, closed", [(1, 1.0, True), (2, 2.0, True), (3, 3.0, True), (3, 2.9, False),
                                                (5, 4.0, False), (5, 5.0, True)])
def test_a_plane_closes_whole_when_it_is_at_most_the_width_thick_and_keeps_all_its_fat_otherwise(gap, width, closed):
    anatomy, labels = _slab_case(gap)
    before_labels = labels.copy()
    given = close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), width)
    plane = anatomy[:, :, 10:10 + gap]
    if closed:
        assert (plane == LIVER).all() and given == plane.size
    else:
        assert (plane == 0).all() and given == 0  # no island of liver in a plane left open
    assert (labels == before_labels).all() and (anatomy[:, :, :10] == 0).all()  # the kidney stays the kidney


def test_only_unlabelled_voxels_are_taken_and_the_thinner_plane_wins():
    """An adrenal gland in the plane stays; a voxel between the kidney and both organs goes to the one with the
    thinner plane; fat beside the kidney where no organ is near stays fat."""
    anatomy, labels = _adrenal_case()
    anatomy[:, 22:28, 10:20] = SPLEEN     # 2 voxels of fat on its +y side
    close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 4.0)
    assert (anatomy[:, 10:20, 21] == ADRENAL).all()
    assert (anatomy[:, 20:22, 10:19] == SPLEEN).all()
    assert (anatomy[:, 10:18, 5:10] == 0).all()  # the -x side, away from the spleen: no organ, the fat stays
    # In both planes (sums within 4 mm + 1 voxel): (y 20, x 19) 4.16 mm to the liver, 3 to the spleen;
    # (19, 20) 3 to the liver, 4.16 to the spleen; (20, 20) 3.65 to both, a tie.
    assert (anatomy[:, 20, 19] == SPLEEN).all() and (anatomy[:, 19, 20] == LIVER).all()
    assert (anatomy[:, 20, 20] == LIVER).all()


def test_no_island_behind_a_structure_lying_in_the_plane():
    """Kidney, one voxel of fat, a sheet of adrenal, then liver: the fat voxel's straight distances add up to 3 mm,
    within a 2 mm width plus a voxel, but the liver reaches it only around the sheet, so it stays fat."""
    anatomy, labels = _slab_case(2)
    anatomy[:, :, 11] = ADRENAL
    assert close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 2.0) == 0
    assert (anatomy[:, :, 10] == 0).all()
    anatomy[:6, :, 11] = 0  # an opening in the sheet: the plane closes there, behind the sheet only near it
    assert close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 2.0) == 6 * 12 * 2
    assert (anatomy[:6, :, 10:12] == LIVER).all() and (anatomy[6:, :, 10] == 0).all()
    # 3 mm + 1: the row next to the opening is 1 + 1.41 mm from the liver around the edge, 1 from the kidney
    anatomy, labels = _slab_case(2)
    anatomy[6:, :, 11] = ADRENAL
    close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 3.0)
    assert (anatomy[6, :, 10] == LIVER).all() and (anatomy[7:, :, 10] == 0).all()


def test_the_organ_does_not_wrap_around_a_structure_to_the_fat_behind_it():
    """A strip of adrenal as long as the kidney's face between it and the liver: the liver reaches the fat behind
    it only around its ends, so the middle of that fat stays fat (a straight distance closed all of it)."""
    anatomy, labels = _adrenal_case()
    close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 4.0)
    assert (anatomy[:, 12:18, 20] == 0).all()


def test_a_sheet_whose_voxels_meet_at_edges_still_separates():
    """A staircase of adrenal (x 11 on even rows, 12 on odd) between the kidney and the liver: the fat on the
    kidney's side touches the liver's side only across edges, so it stays fat."""
    anatomy, labels = _slab_case(3)
    anatomy[:, 0::2, 11] = ADRENAL
    anatomy[:, 1::2, 12] = ADRENAL
    close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 3.5)
    assert (anatomy[:, :, 10] == 0).all() and (anatomy[:, 1::2, 11] == 0).all()
    assert (anatomy[:, 0::2, 12] == LIVER).all()  # on the liver's side of the sheet


def test_a_tie_goes_to_the_liver():
    """A row exactly as far from the liver (y < 5) as from the spleen (y > 5) across the same fat plane."""
    anatomy, labels = _slab_case(2)
    anatomy[:, 5, 12:] = 0
    anatomy[:, 6:, 12:30] = SPLEEN
    close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 3.0)
    assert (anatomy[:, :6, 10:12] == LIVER).all() and (anatomy[:, 6:, 10:12] == SPLEEN).all()
    assert (anatomy[:, 5, 12] == LIVER).all()  # in the gap between the organs too: 3 + 1 mm, a tie


def test_a_plane_across_a_finer_axis_closes_up_to_the_difference_thicker():
    """At 3 x 1 x 1 mm the slack is the 3 mm side: across x (1 mm) a 2 mm width closes a 4 mm plane, not 5 mm;
    across z (3 mm) one slice of fat, 3 mm, needs a width of 3 mm."""
    for gap, closed in ((4, True), (5, False)):
        anatomy, labels = _slab_case(gap)
        close_fat_planes(anatomy, labels, (3.0, 1.0, 1.0), 2.0)
        assert (anatomy[:, :, 10:10 + gap] == (LIVER if closed else 0)).all()
    for width, closed in ((2.9, False), (3.0, True)):
        labels = np.zeros((12, 8, 8), np.uint8)
        anatomy = np.zeros_like(labels)
        labels[:4] = 1
        anatomy[5:10] = LIVER
        close_fat_planes(anatomy, labels, (3.0, 1.0, 1.0), width)
        assert (anatomy[4] == (LIVER if closed else 0)).all()


def test_anisotropic_spacing_counts_millimetres():
    """Two voxels of fat across x at 2.5 mm are a 5 mm plane: a 4 mm width leaves it, 5 mm closes it."""
    anatomy, labels = _slab_case(2)
    close_fat_planes(anatomy, labels, (1.0, 1.0, 2.5), 4.0)
    assert (anatomy[:, :, 10:12] == 0).all()
    close_fat_planes(anatomy, labels, (1.0, 1.0, 2.5), 5.0)
    assert (anatomy[:, :, 10:12] == LIVER).all()


def test_bad_width_and_no_kidney():
    anatomy, labels = _slab_case(2)
    with pytest.raises(ValueError, match="positive width"):
        close_fat_planes(anatomy, labels, (1.0, 1.0, 1.0), 0.0)
    assert close_fat_planes(anatomy, np.zeros_like(labels), (1.0, 1.0, 1.0), 3.0) == 0


def test_about_half_the_cases_close_their_planes_at_a_width_in_range():
    drawn = []
    for seed in range(200):
        anatomy, labels = _slab_case(1)
        width, ml = organ_contact(anatomy, labels, (1.0, 1.0, 1.0), np.random.default_rng(seed))
        assert (anatomy[:, :, 10] == (LIVER if width else 0)).all()
        assert ml == (12 * 12 / 1000 if width else 0.0)  # the one-voxel plane, 12 x 12 mm
        drawn += [width] if width is not None else []
    assert 70 <= len(drawn) <= 130
    assert all(CONTACT_MM[0] <= w <= CONTACT_MM[1] for w in drawn)


def test_contact_drawn_with_no_organ_near_closes_nothing():
    anatomy, labels = _slab_case(12)  # liver 12 mm away: beyond any width drawn
    seed = next(s for s in range(50) if np.random.default_rng(s).random() < CONTACT_P)
    width, ml = organ_contact(anatomy, labels, (1.0, 1.0, 1.0), np.random.default_rng(seed))
    assert width is not None and ml == 0.0 and (anatomy[:, :, 10:22] == 0).all()


def _read(d, name):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(d / name)))


def test_with_the_option_only_fat_by_the_kidneys_becomes_liver_or_spleen(shared_data, tmp_path):
    """Through the command line: the KiTS labels are those made without the option; the anatomy changes only
    where 'body' becomes liver or spleen, next to a kidney; the CT there is no longer fat; the case records the
    width and the mL closed. A case drawn without contact is byte-identical to the one made without the option."""
    seen = set()
    for seed in range(1, 12):
        off, off_dir = generate_case(shared_data, tmp_path / f"{seed}_off", seed)
        on, on_dir = generate_case(shared_data, tmp_path / f"{seed}_on", seed, ["--organ-contact"])
        kind = "kept" if on["organ_contact_mm"] is None else "closed"
        if kind in seen:
            continue
        seen.add(kind)
        assert "organ_contact_mm" not in off and on["phase"] == off["phase"]
        assert (on_dir / "segmentation.nii.gz").read_bytes() == (off_dir / "segmentation.nii.gz").read_bytes()
        if kind == "kept":
            for name in ("anatomy.nii.gz", "imaging.nii.gz"):
                assert (on_dir / name).read_bytes() == (off_dir / name).read_bytes(), name
        else:
            a_on, a_off = _read(on_dir, "anatomy.nii.gz"), _read(off_dir, "anatomy.nii.gz")
            changed = a_on != a_off
            assert changed.any()
            assert (a_off[changed] == ANATOMY["body"]).all()
            assert np.isin(a_on[changed], [LIVER, SPLEEN]).all()
            voxel_ml = np.prod(sitk.ReadImage(str(on_dir / "anatomy.nii.gz")).GetSpacing()) / 1000
            assert on["organ_contact_ml"] == pytest.approx(changed.sum() * voxel_ml, abs=1e-3)
            ct_on, ct_off = _read(on_dir, "imaging.nii.gz"), _read(off_dir, "imaging.nii.gz")
            assert ct_off[changed].mean() < -20 < ct_on[changed].mean()  # perirenal fat before, organ after
        if len(seen) == 2:
            break
    assert seen == {"kept", "closed"}
    entry = json.loads((tmp_path / "1_on" / "synthetic.json").read_text())
    assert entry["config"]["real_anatomy"]["scanner"]["organ_contact"] is True
