"""Synthetic CT from real KiTS23 label maps: exact labels, plausible HU, determinism, held-out refusal."""
import json

import numpy as np
import pytest
from scipy import ndimage

from KidneyTumorSegLib.image_io import read_labelmap
from KidneyTumorSegLib.labels import Label
from training.datasets import HeldOutError, discover, read_case
from training.synthetic import SynthConfig, downsample_labels, insert_lesions, main, make_case

CASE = "case_00534"  # the smallest KiTS23 label map (36 slices at 5 mm): fast
SPACING = (3.0, 3.0, 3.0)
CONFIG = SynthConfig(unenhanced_p=0.0, kidney_hu=(180.0, 190.0), tumor_hu=(60.0, 70.0), cyst_hu=(5.0, 10.0),
                     noise_sd=(5.0, 10.0), necrosis_p=0.0, corticomedullary_p=0.0)


@pytest.fixture(scope="module")
def source(shared_data):
    return read_labelmap(shared_data / "kits23" / "labels" / f"{CASE}.nii.gz")


@pytest.fixture(scope="module")
def case(source):
    return make_case(source, np.random.default_rng(7), CONFIG, spacing=SPACING)


def _interior_mean(ct, labels, k):
    inner = ndimage.binary_erosion(labels == k, iterations=1)
    return float(ct[inner].mean()), int(inner.sum())


def test_labels_are_the_downsampled_source_labels(source, case):
    ct, labels = case
    expected = downsample_labels(source, SPACING)
    assert np.array_equal(labels.array, expected.array)
    assert labels.geometry == expected.geometry == ct.geometry
    assert np.allclose(ct.geometry.spacing, SPACING)
    assert set(np.unique(labels.array)) == set(np.unique(source.array))


def test_hu_ranges_per_tissue(case):
    ct, labels = case
    a, lab = ct.array.astype(float), labels.array
    assert ct.array.dtype == np.int16
    kidney, n = _interior_mean(a, lab, Label.KIDNEY)
    assert n > 100 and 180 - 15 <= kidney <= 190 + 15  # configured range, +- bias/blur
    tumor, n = _interior_mean(a, lab, Label.TUMOR)
    assert n > 10 and 60 - 20 <= tumor <= 70 + 20
    if (lab == Label.CYST).any():
        cyst, n = _interior_mean(a, lab, Label.CYST)
        assert n == 0 or -15 <= cyst <= 25
    assert a[:, :3, :3].mean() < -900  # air in the corners
    assert np.mean((a > -160) & (a < -40)) > 0.03  # fat is present
    assert a.max() > 300  # bone
    # the volume is a valid CT for the reader's HU checks
    from KidneyTumorSegLib.image_io import validate_ct
    validate_ct(ct)


def test_unenhanced_phase(source):
    """Without contrast the kidney is at soft-tissue density, the tumor differs from it by 12-40 HU, the
    aorta is not bright, and a cyst stays darker than its kidney."""
    config = SynthConfig(unenhanced_p=1.0, unenhanced_kidney_hu=(30.0, 35.0), noise_sd=(5.0, 6.0), necrosis_p=0.0)
    for seed in (1, 2, 3):
        ct, labels = make_case(source, np.random.default_rng(seed), config, spacing=SPACING)
        a, lab = ct.array.astype(float), labels.array
        kidney, _ = _interior_mean(a, lab, Label.KIDNEY)
        assert 30 - 12 <= kidney <= 35 + 12
        tumor, n = _interior_mean(a, lab, Label.TUMOR)
        assert n > 10 and 12 - 15 <= abs(tumor - kidney) <= 40 + 15
        if (lab == Label.CYST).any():
            cyst, n = _interior_mean(a, lab, Label.CYST)
            assert n == 0 or cyst < kidney - 5
        near_kidneys = a[:, :, :][np.broadcast_to(lab.any(axis=(1, 2))[:, None, None], a.shape)]
        assert np.mean((near_kidneys > 130) & (near_kidneys < 290)) < 0.016  # bone edges only (contrast: >= 0.023)


def test_anatomy_above_and_below_the_kidneys(shared_data):
    """Lung bases (air inside the body) above the kidneys and bone (iliac wings) well below them."""
    source = read_labelmap(shared_data / "kits23" / "labels" / "case_00033.nii.gz")
    ct, labels = make_case(source, np.random.default_rng(0), spacing=(4.0, 4.0, 4.0))
    a, lab = ct.array.astype(float), labels.array
    z_kidney = np.nonzero(lab.any(axis=(1, 2)))[0]
    below, above = a[: max(z_kidney.min() - 5, 1)], a[z_kidney.max() + 10:]
    assert below.size and above.size
    body_above = above[:, above.shape[1] // 4: 3 * above.shape[1] // 4, above.shape[2] // 4: 3 * above.shape[2] // 4]
    assert np.mean(body_above < -700) > 0.05      # lung bases / bowel gas inside the body
    assert np.mean(below > 300) > 0.002          # pelvic bone besides the spine


def test_deterministic_by_seed(source):
    a1, l1 = make_case(source, np.random.default_rng(3), spacing=(4.0, 4.0, 5.0))
    a2, l2 = make_case(source, np.random.default_rng(3), spacing=(4.0, 4.0, 5.0))
    a3, _ = make_case(source, np.random.default_rng(4), spacing=(4.0, 4.0, 5.0))
    assert np.array_equal(a1.array, a2.array) and np.array_equal(l1.array, l2.array)
    assert not np.array_equal(a1.array, a3.array)


def test_random_spacing_within_range(source):
    ct, labels = make_case(source, np.random.default_rng(1), SynthConfig(spacing=(3.5, 4.5)))
    assert all(3.5 <= s <= 4.5 for s in ct.geometry.spacing)


def test_insert_lesions_into_kidneys(case):
    ct, labels = case
    kidney = labels.array > 0
    from KidneyTumorSegLib.geometry import Image
    new_ct, new_lab = insert_lesions(ct, Image(kidney.astype(np.uint8), labels.geometry), np.random.default_rng(0),
                                     CONFIG, n_lesions=(2, 2))
    lesion = new_lab.array >= Label.TUMOR
    assert lesion.any() and set(np.unique(new_lab.array)) <= {0, 1, 2, 3}
    assert np.all(new_lab.array[kidney & ~lesion] == Label.KIDNEY)
    assert np.all(new_lab.array[~kidney & ~lesion] == 0)
    far = ndimage.distance_transform_edt(~lesion) > 3
    assert np.array_equal(new_ct.array[far], ct.array[far])  # only the lesion's neighbourhood changes


def test_example_ct_is_refused(shared_data, tmp_path):
    ct_path = shared_data / "ct" / "example_ct.nii.gz"
    masks = [str(shared_data / "ct" / f"example_ct_kidney_{s}.nii.gz") for s in ("left", "right")]
    with pytest.raises(HeldOutError, match="held-out"):
        main(["--insert-lesions", str(ct_path), "--kidney-mask", *masks, "-o", str(tmp_path / "o"), "-n", "1"])
    copy = tmp_path / "renamed.nii.gz"
    copy.write_bytes(ct_path.read_bytes())
    with pytest.raises(HeldOutError):
        main(["--insert-lesions", str(copy), "--kidney-mask", masks[0], "-o", str(tmp_path / "o"), "-n", "1"])
    from KidneyTumorSegLib.image_io import read_image
    with pytest.raises(HeldOutError):  # a re-encoded copy is caught by its geometry
        insert_lesions(read_image(ct_path), read_labelmap(masks[0]), np.random.default_rng(0), source="x.nrrd")
    assert not (tmp_path / "o" / "case_renamed_000").exists()


def test_command_line_writes_kits23_layout(shared_data, tmp_path):
    out = tmp_path / "synth"
    assert main(["--kits23", str(shared_data / "kits23" / "labels"), "-o", str(out), "--cases", CASE,
                 "--seed", "5", "--spacing", "4", "4"]) == 0
    cases = discover(out)
    assert [c.case_id for c in cases] == [CASE] and cases[0].layout == "kits23"
    ct, labels = read_case(cases[0])  # geometry of image and labels match; CT passes the HU checks
    assert labels.array.max() >= Label.TUMOR and np.allclose(ct.geometry.spacing, 4.0)


def test_worker_processes_write_the_same_files(shared_data, tmp_path):
    """Each case has its own seed: two worker processes write byte-identical cases to one process."""
    args = ["--kits23", str(shared_data / "kits23" / "labels"), "--cases", CASE, "case_00041", "--seed", "5",
            "--spacing", "5", "5"]
    assert main(args + ["-o", str(tmp_path / "one")]) == 0
    assert main(args + ["-o", str(tmp_path / "two"), "--workers", "2"]) == 0
    for case in (CASE, "case_00041"):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            one, two = (tmp_path / d / case / name for d in ("one", "two"))
            assert one.read_bytes() == two.read_bytes()
    logs = [json.loads((tmp_path / d / "synthetic.json").read_text(encoding="utf-8")) for d in ("one", "two")]
    assert logs[0] == logs[1] and sorted(logs[0]["cases"]) == sorted([CASE, "case_00041"])


def test_exclude_gives_a_disjoint_test_set(shared_data, tmp_path, monkeypatch):
    import training.synthetic as synthetic
    labels = shared_data / "kits23" / "labels"
    train = tmp_path / "train"
    train.mkdir()
    (train / "synthetic.json").write_text(json.dumps({"cases": {CASE: {}, "case_00041": {}}}), encoding="utf-8")
    drawn = []  # record the drawn cases instead of painting them
    monkeypatch.setattr(synthetic, "_synth_one", lambda job: drawn.append(job[2]) or (job[2], {"kits_case": job[2]}))
    # -n larger than what is left: every remaining case is drawn, and no excluded one
    assert main(["--kits23", str(labels), "-o", str(tmp_path / "test"), "-n", "10000", "--exclude", str(train)]) == 0
    assert CASE not in drawn and "case_00041" not in drawn
    assert len(drawn) == len(list(labels.glob("case_*.nii.gz"))) - 2


def test_extend_pads_the_pelvis_without_moving_the_labels(source):
    plain = downsample_labels(source, (5.0, 5.0, 5.0))
    ct, labels = make_case(source, np.random.default_rng(0), SynthConfig(extend_mm=(150.0, 150.0)),
                           spacing=(5.0, 5.0, 5.0))
    z = np.nonzero(labels.array.any(axis=(1, 2)))[0]
    assert z[0] * 5.0 >= 150.0 and labels.array.shape[0] > plain.array.shape[0]
    assert labels.geometry.size[:2] == plain.geometry.size[:2] and ct.geometry == labels.geometry
    # every labelled voxel keeps its physical place and value
    pts = lambda im: im.geometry.index_to_physical(np.argwhere(im.array > 0)[:, ::-1].astype(float))  # noqa: E731
    np.testing.assert_allclose(pts(labels), pts(plain), atol=1e-6)
    assert np.array_equal(labels.array[labels.array > 0], plain.array[plain.array > 0])
    assert (ct.array[: z[0]] > 300).mean() > 0.002  # bone (iliac wings, hips) in the added pelvis


def test_cases_that_the_label_folder_lacks_are_named_before_any_painting(shared_data, tmp_path, capsys):
    labels = str(shared_data / "kits23" / "labels")
    with pytest.raises(SystemExit) as stop:
        main(["--kits23", labels, "-o", str(tmp_path / "o"), "--cases", CASE, "case_99999", "--seed", "5"])
    assert stop.value.code == 2 and "no KiTS23 label map for case_99999 in" in capsys.readouterr().err
    train = tmp_path / "train"  # an id another set holds is excluded, and named so
    train.mkdir()
    (train / "synthetic.json").write_text(json.dumps({"cases": {CASE: {}}}), encoding="utf-8")
    with pytest.raises(SystemExit):
        main(["--kits23", labels, "-o", str(tmp_path / "o"), "--cases", CASE, "--exclude", str(train)])
    assert f"no KiTS23 label map for {CASE} in {labels} (or excluded by --exclude)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
