"""--extra-cysts: simple cysts added to some kidneys, from within the cortex to half bulging out (synth_cysts)."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.labels import Label
from training.anatomy_maps import ANATOMY
from training.synth_cysts import CYST_P, MIN_ML, RADIUS_MM, add_cysts
from synth_one_case import generate_case

SP = (1.0, 1.0, 1.0)


def _kidney_case():
    """A 1 mm grid: a 30 x 40 x 24 mm box kidney with a tumor at one end and, beside it, a liver slab and a sinus
    structure (anatomy values a cyst may never take)."""
    labels = np.zeros((60, 80, 70), np.uint8)
    anatomy = np.zeros_like(labels)
    labels[15:45, 20:60, 23:47] = Label.KIDNEY
    labels[15:45, 52:60, 23:47] = Label.TUMOR
    anatomy[:, :, 0:12] = ANATOMY["liver"]
    anatomy[25:35, 30:40, 47:52] = ANATOMY["renal_sinus_fat"]
    return anatomy, labels


def _seeds(want_cysts=True, n=40):
    return [s for s in range(n) if (np.random.default_rng(s).random() < CYST_P) == want_cysts]


def test_cysts_take_only_kidney_and_unlabelled_voxels_and_some_bulge_out():
    outside, total = 0, 0
    for seed in _seeds()[:12]:
        anatomy, labels = _kidney_case()
        before = labels.copy()
        count, ml = add_cysts(anatomy, labels, SP, np.random.default_rng(seed))
        new = labels != before
        assert (labels[new] == Label.CYST).all()  # the cyst label is the only change
        assert np.isin(before[new], [0, Label.KIDNEY]).all()  # never a tumor
        assert (anatomy[new & (before == 0)] == 0).all()  # never the liver or the sinus structure
        assert ml == pytest.approx(new.sum() / 1000.0, abs=1e-3)
        assert (count == 0) == (ml == 0.0) and (count == 0 or ml >= MIN_ML)
        largest = 4 / 3 * np.pi * (RADIUS_MM[1] * 1.15) ** 3 / 1000.0
        assert ml <= 2 * largest  # at most two cysts of the largest size
        outside += int((new & (before == 0)).sum())
        total += int(new.sum())
    assert total > 0 and 0 < outside < 0.5 * total  # some cyst voxels bulge out of the kidney, most lie in it


def test_stray_label_pieces_and_voxels_outside_the_body_get_no_cyst():
    for seed in _seeds()[:8]:
        anatomy, labels = _kidney_case()
        labels[2, 2, 60] = Label.KIDNEY  # a stray voxel of the label map: not a kidney
        body = np.ones(labels.shape, bool)
        body[:, :, 47:] = False  # the body ends at the kidney's right face
        before = labels.copy()
        add_cysts(anatomy, labels, SP, np.random.default_rng(seed), body)
        new = labels != before
        assert not new[:5, :5, 55:].any() and not (new & ~body & (before == 0)).any()
    anatomy, labels = _kidney_case()
    labels[labels > 0] = 0
    labels[10:20, 10:20, 30:40] = Label.KIDNEY  # 1 mL: below MIN_KIDNEY_ML, no kidney to add a cyst to
    assert add_cysts(anatomy, labels, SP, np.random.default_rng(_seeds()[0])) == (0, 0.0)


def test_a_kidney_not_drawn_keeps_its_labels_and_the_draw_is_repeatable():
    anatomy, labels = _kidney_case()
    seed = _seeds(want_cysts=False)[0]
    assert add_cysts(anatomy, labels, SP, np.random.default_rng(seed)) == (0, 0.0)
    assert (labels == _kidney_case()[1]).all()
    a, b = _kidney_case()[1], _kidney_case()[1]
    seed = _seeds()[0]
    add_cysts(_kidney_case()[0], a, SP, np.random.default_rng(seed))
    add_cysts(_kidney_case()[0], b, SP, np.random.default_rng(seed))
    assert (a == b).all()


def _read(d, name):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(d / name)))


def test_with_the_option_only_cyst_labels_are_added_and_painted_as_fluid(shared_data, tmp_path):
    """Through the command line: the labels change only to cyst, the anatomy only where a cyst took body, the CT
    there is fluid, and the case records how many cysts and mL it added. A case that drew no cyst is
    byte-identical to the one made without the option."""
    seen = {}
    for seed in range(1, 16):
        off, off_dir = generate_case(shared_data, tmp_path / f"{seed}_off", seed)
        on, on_dir = generate_case(shared_data, tmp_path / f"{seed}_on", seed, ["--extra-cysts"])
        seen.setdefault(on["extra_cysts"] > 0, (seed, off, off_dir, on, on_dir))
        if len(seen) == 2:
            break
    assert set(seen) == {False, True}
    _, off, off_dir, on, on_dir = seen[False]
    assert on["extra_cysts_ml"] == 0.0
    for name in ("segmentation.nii.gz", "anatomy.nii.gz", "imaging.nii.gz"):
        assert (on_dir / name).read_bytes() == (off_dir / name).read_bytes(), name
    seed, off, off_dir, on, on_dir = seen[True]
    assert "extra_cysts" not in off and on["phase"] == off["phase"]
    l_on, l_off = _read(on_dir, "segmentation.nii.gz"), _read(off_dir, "segmentation.nii.gz")
    new = l_on != l_off
    assert (l_on[new] == Label.CYST).all() and np.isin(l_off[new], [0, Label.KIDNEY]).all()
    # the anatomy map changes only where a cyst bulged into what was body wall or fat: KiTS voxels have none
    a_on, a_off = _read(on_dir, "anatomy.nii.gz"), _read(off_dir, "anatomy.nii.gz")
    assert ((a_on != a_off) == (new & (l_off == 0))).all()
    assert (a_off[new & (l_off == 0)] == ANATOMY["body"]).all() and (a_on[new] == 0).all()
    voxel_ml = np.prod(sitk.ReadImage(str(on_dir / "segmentation.nii.gz")).GetSpacing()) / 1000
    assert on["extra_cysts_ml"] == pytest.approx(new.sum() * voxel_ml, abs=1e-3)
    ct = _read(on_dir, "imaging.nii.gz")
    if not on["random_intensities"]:  # painted like every KiTS cyst: darker than the kidney it sits in
        assert np.median(ct[new]) < np.median(ct[l_on == Label.KIDNEY]) - 10
    entry = json.loads((tmp_path / f"{seed}_on" / "synthetic.json").read_text())
    assert entry["config"]["real_anatomy"]["scanner"]["extra_cysts"] is True
