"""Image I/O: geometry-exact round trips, real CT / DICOM reading, input validation and safe writing."""
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import image_io
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.image_io import read_image, read_labelmap, validate_ct, write_image, write_labelmap


def _geometries(synth):
    """Anisotropic spacing with identity, negative (flipped) and oblique+flipped directions."""
    flip = np.diag([-1.0, -1.0, 1.0])
    oblique = synth.rotation(17, -28, 41) @ np.diag([1.0, -1.0, -1.0])
    return {"identity": Geometry((0.8, 0.7, 2.5), (-12.5, 30.25, -800.0), np.eye(3)),
            "flipped": Geometry((3.0, 1.25, 0.6), (177.956, -11.319, 94.302), flip),
            "oblique": Geometry((0.7, 1.3, 2.9), (101.123456789, -22.5, 341.75), oblique)}


def _assert_geometry(a: Geometry, b: Geometry, exact: bool):
    assert a.size == b.size
    if exact:  # NRRD stores direction * spacing, so the direction may differ in the last bit
        assert a.spacing == b.spacing and a.origin == b.origin
        assert np.allclose(a.direction, b.direction, rtol=0, atol=1e-14)
    else:  # NIfTI stores the affine as float32
        assert a.is_close(b, atol=1e-4)


@pytest.mark.parametrize("ext", ["nii.gz", "nrrd", "mha"])
@pytest.mark.parametrize("which", ["identity", "flipped", "oblique"])
def test_round_trip_preserves_array_and_geometry(tmp_path, synth, ext, which):
    geometry = _geometries(synth)[which]
    labels = synth.labels((12, 20, 16))
    ct = synth.ct(labels)
    write_labelmap(labels, geometry, tmp_path / f"labels.{ext}")
    write_image(ct, geometry, tmp_path / f"ct.{ext}")
    lab = read_labelmap(tmp_path / f"labels.{ext}")
    img = read_image(tmp_path / f"ct.{ext}")
    assert lab.array.dtype == np.uint8 and np.array_equal(lab.array, labels)
    assert img.array.dtype == np.float32 and np.array_equal(img.array, ct)
    for got in (lab.geometry, img.geometry):
        _assert_geometry(got, Geometry(geometry.spacing, geometry.origin, geometry.direction, (16, 20, 12)),
                         exact=ext != "nii.gz")


@pytest.mark.parametrize("ext", ["mhd", "nhdr", "nii"])
def test_reads_two_file_and_uncompressed_formats(tmp_path, synth, ext):
    g = _geometries(synth)["oblique"]
    ct = synth.ct(synth.labels((12, 20, 16))).astype(np.int16)
    sitk.WriteImage(Image(ct, g).to_sitk(), str(tmp_path / f"ct.{ext}"))
    img = read_image(tmp_path / f"ct.{ext}")
    assert np.array_equal(img.array, ct) and img.geometry.is_close(g, atol=1e-4)


def test_geometry_maths_agrees_with_simpleitk(synth):
    g = _geometries(synth)["oblique"]
    img = g.apply_to(sitk.Image(16, 20, 12, sitk.sitkUInt8))
    for ijk in [(0, 0, 0), (3, 7, 11), (15, 19, 2)]:
        p = g.index_to_physical(ijk)
        assert np.allclose(p, img.TransformIndexToPhysicalPoint(ijk), atol=1e-9)
        assert np.allclose(g.physical_to_index(p), ijk, atol=1e-9)
    assert np.allclose(g.affine()[:3, 3], g.origin)
    assert Geometry.from_dict(g.to_dict()) == g and Geometry.from_sitk(img).is_close(g, 1e-12)


# -- real data ----------------------------------------------------------------------------------
def _centroid_lps(image: Image) -> np.ndarray:
    zyx = np.argwhere(image.array > 0).mean(axis=0)
    return image.geometry.index_to_physical(zyx[::-1])


def test_real_ct_geometry_and_kidney_sides(shared_data):
    ct = read_image(shared_data / "ct" / "example_ct.nii.gz")
    g = ct.geometry
    assert ct.array.shape == (112, 101, 122) and g.size == (122, 101, 112)
    assert g.spacing == (3.0, 3.0, 3.0)
    assert np.allclose(g.direction_matrix, np.diag([-1, -1, 1]))
    assert np.allclose(g.origin, (177.956, -11.319, 94.302), atol=1e-3)
    assert ct.array.min() == -1207 and ct.array.max() == 3382
    left = read_labelmap(shared_data / "ct" / "example_ct_kidney_left.nii.gz")  # stored as float64 0/1
    right = read_labelmap(shared_data / "ct" / "example_ct_kidney_right.nii.gz")
    for mask, count in [(left, 5144), (right, 6993)]:
        assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) == {0, 1}
        assert int(mask.array.sum()) == count and mask.geometry.is_close(g, 1e-9)
    cl, cr = _centroid_lps(left), _centroid_lps(right)
    assert cl[0] > 30 and cr[0] < -30  # LPS +x is the patient's left
    assert np.allclose(cl, (77.6, -125.9, 357.4), atol=0.1) and np.allclose(cr, (-69.4, -132.0, 345.6), atol=0.1)


def test_real_ct_cropped_to_body_still_passes_hu_rule(shared_data):
    ct = read_image(shared_data / "ct" / "example_ct.nii.gz")
    validate_ct(Image(ct.array[40:80, 35:70, 35:90].copy()), "body crop")  # no outside air left


def test_dicom_series_with_empty_uid(shared_data):
    folder = shared_data / "dicom" / "example_series"
    img = read_image(folder)
    assert img.array.shape == (20, 512, 512)
    assert img.geometry.spacing == (0.9765625, 0.9765625, 2.0)
    assert np.allclose(img.geometry.direction_matrix, np.eye(3))
    assert np.isclose(img.geometry.origin[2], -804.5)
    assert img.array.min() == -1024 and img.array.max() == 1839
    assert read_image(folder, series_uid="").array.shape == (20, 512, 512)
    with pytest.raises(InputError, match=r"not in folder.*available series ids: '' \(20 files\)"):
        read_image(folder, series_uid="1.2.3.999")


def _write_series(folder, uid, n_slices, z0=0.0, step=2.5, size=32):
    """Small synthetic CT series (int16 HU) written slice by slice with explicit DICOM tags."""
    rng = np.random.default_rng(n_slices)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(n_slices):
        sl = sitk.GetImageFromArray((rng.random((size, size)) * 1400 - 1000).astype(np.int16))
        sl.SetSpacing((0.8, 0.8))
        for tag, value in [("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
                           ("0020|000e", uid), ("0008|0018", f"{uid}.{k + 1}"), ("0020|0013", str(k + 1)),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0032", f"-10\\-20\\{z0 + k * step}"),
                           ("0018|0050", str(step)), ("0028|0030", "0.8\\0.8")]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid}_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_folder_with_two_series_picks_the_larger(tmp_path):
    _write_series(tmp_path, "1.2.3", 9)
    _write_series(tmp_path, "1.2.9", 12, z0=100.0)
    img = read_image(tmp_path)
    assert img.array.shape == (12, 32, 32)
    assert img.geometry.spacing == pytest.approx((0.8, 0.8, 2.5)) and img.geometry.origin[2] == pytest.approx(100)
    assert read_image(tmp_path, series_uid="1.2.3").array.shape == (9, 32, 32)
    with pytest.raises(InputError, match=r"'1\.2\.3' \(9 files\), '1\.2\.9' \(12 files\)"):
        read_image(tmp_path, series_uid="9.9")


def test_dicom_with_the_real_series_beside_a_small_one(tmp_path, shared_data):
    for f in (shared_data / "dicom" / "example_series").iterdir():
        shutil.copy(f, tmp_path / f.name)
    _write_series(tmp_path, "1.2.3", 10)
    assert read_image(tmp_path).array.shape == (20, 512, 512)
    assert read_image(tmp_path, series_uid="1.2.3").array.shape == (10, 32, 32)


def test_dicom_with_missing_slice_is_refused(tmp_path, shared_data):
    files = sorted((shared_data / "dicom" / "example_series").iterdir())
    for f in files[:10] + files[11:]:
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_image(tmp_path)


# -- validation -------------------------------------------------------------------------------------
def _write_raw(path, array, spacing=(1.0, 1.0, 1.0), vector=False):
    img = sitk.GetImageFromArray(array, isVector=vector)
    img.SetSpacing((tuple(spacing) + (1.0,))[:img.GetDimension()])
    sitk.WriteImage(img, str(path))


def _ct_like(shape=(12, 16, 16)):
    return np.random.default_rng(1).uniform(-1000, 1000, shape).astype(np.float32)


def _bad_inputs(tmp):
    """name -> (path maker, words expected in the message)."""
    def nan():
        a = _ct_like(); a[3, 4, 5] = np.nan; _write_raw(tmp / "nan.nrrd", a); return tmp / "nan.nrrd"

    def inf():
        a = _ct_like(); a[3, 4, 5] = np.inf; _write_raw(tmp / "inf.mha", a); return tmp / "inf.mha"

    def truncated(ext):  # ITK itself zero-fills truncated NIfTI without any error
        _write_raw(tmp / f"full.{ext}", _ct_like((20, 30, 30)))
        data = (tmp / f"full.{ext}").read_bytes()
        (tmp / f"cut.{ext}").write_bytes(data[: len(data) * 2 // 3])
        (tmp / f"full.{ext}").unlink()
        return tmp / f"cut.{ext}"

    def text(name, content):
        (tmp / name).write_bytes(content); return tmp / name

    def raw(name, array, **kw):
        _write_raw(tmp / name, array, **kw); return tmp / name

    def zero_spacing():
        raw("z.mha", _ct_like().astype(np.int16))
        hdr = (tmp / "z.mha").read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 0 1 1")
        return text("zero.mha", hdr)

    return {
        "missing": (lambda: tmp / "nope.nii.gz", ["does not exist"]),
        "corrupt": (lambda: text("junk.nrrd", b"NRRD0004\nthis is not an image\n"), ["could not read"]),
        "truncated_gz": (lambda: truncated("nii.gz"), ["truncated"]),
        "truncated_nii": (lambda: truncated("nii"), ["truncated"]),
        "extension": (lambda: text("slice.png", b"\x89PNG"), ["unsupported file type", ".png"]),
        "single_dicom": (lambda: text("one.dcm", b"x"), ["single dicom file", "folder"]),
        "empty_dicom": (lambda: (tmp / "empty").mkdir() or tmp / "empty", ["no dicom series"]),
        "2d": (lambda: raw("flat.nrrd", _ct_like((1, 16, 16))[0]), ["2d"]),
        "4d": (lambda: raw("four.nii.gz", _ct_like((2, 9, 9, 9))), ["4d"]),
        "rgb": (lambda: raw("rgb.nrrd", np.zeros((9, 9, 9, 3), np.uint8), vector=True), ["vector/rgb"]),
        "nan": (nan, ["nan"]),
        "inf": (inf, ["infinite"]),
        "few_slices": (lambda: raw("thin.nrrd", _ct_like((5, 16, 16))), ["only 5", "at least 8 slices"]),
        "zero_spacing": (zero_spacing, ["zero or negative voxel spacing"]),
        "huge_spacing": (lambda: raw("huge.nrrd", _ct_like(), spacing=(1.0, 1.0, 25.0)), ["implausible voxel spacing"]),
        "screenshot": (lambda: raw("shot.nrrd", np.random.default_rng(0).integers(0, 256, (9, 16, 16), dtype=np.uint8)),
                       ["8-bit screenshot"]),
        "mr_or_no_intercept": (lambda: raw("mr.nrrd", np.random.default_rng(0).integers(0, 4096, (9, 16, 16))
                                           .astype(np.int16)), ["no voxel below -100 hu"]),
        "narrow_range": (lambda: raw("z.nrrd", np.random.default_rng(0).uniform(-300, 100, (9, 16, 16))
                                     .astype(np.float32)), ["too narrow"]),
    }


@pytest.mark.parametrize("case", [
    "missing", "corrupt", "truncated_gz", "truncated_nii", "extension", "single_dicom", "empty_dicom", "2d", "4d",
    "rgb", "nan", "inf",
    "few_slices", "zero_spacing", "huge_spacing", "screenshot", "mr_or_no_intercept", "narrow_range"])
def test_bad_input_raises_one_clear_input_error(tmp_path, case):
    make, words = _bad_inputs(tmp_path)[case]
    path = make()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert all(w in message.lower() for w in words), message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence
    assert sorted(os.listdir(tmp_path)) == before  # nothing written beside the input


def test_validate_ct_rejects_zero_and_negative_spacing_geometry():
    for spacing in [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0)]:
        with pytest.raises(InputError, match="zero, negative"):
            validate_ct(Image(_ct_like(), Geometry(spacing=spacing)))


def test_labelmap_validation(tmp_path):
    _write_raw(tmp_path / "prob.nii.gz", np.full((9, 9, 9), 0.5))
    _write_raw(tmp_path / "neg.nrrd", np.full((9, 9, 9), -1, np.int16))
    with pytest.raises(InputError, match="non-integer"):
        read_labelmap(tmp_path / "prob.nii.gz")
    with pytest.raises(InputError, match="outside 0..65535"):
        read_labelmap(tmp_path / "neg.nrrd")


# -- writing --------------------------------------------------------------------------------------
def test_write_refuses_overwrite_and_keeps_existing_file(tmp_path):
    labels = np.zeros((9, 10, 11), np.uint8)
    out = write_labelmap(labels, Geometry(), tmp_path / "seg.nrrd")
    original = out.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_labelmap(labels + 1, Geometry(), out)
    assert out.read_bytes() == original
    write_labelmap(labels + 2, Geometry(), out, overwrite=True)
    assert np.all(read_labelmap(out).array == 2)
    assert sorted(os.listdir(tmp_path)) == ["seg.nrrd"]


def test_write_never_targets_the_input(tmp_path, shared_data):
    src = tmp_path / "ct.nrrd"
    _write_raw(src, _ct_like())
    data = src.read_bytes()
    image = read_image(src)
    with pytest.raises(InputError, match="is \\(inside\\) the input"):
        write_image(image.array, image.geometry, tmp_path / "." / "ct.nrrd", overwrite=True, input_paths=[src])
    dicom = shared_data / "dicom" / "example_series"
    with pytest.raises(InputError, match="input"):
        write_labelmap(np.zeros((20, 512, 512), np.uint8), Geometry(), dicom / "seg.nrrd", input_paths=[dicom])
    assert src.read_bytes() == data and sorted(os.listdir(tmp_path)) == ["ct.nrrd"]


@pytest.mark.parametrize("raises", [True, False])  # False: ITK's NIfTI writer does not report a failed write
def test_atomic_write_leaves_no_temporary_file_on_failure(tmp_path, monkeypatch, capfd, raises):
    out = write_labelmap(np.zeros((9, 9, 9), np.uint8), Geometry(), tmp_path / "seg.nii.gz")
    original = out.read_bytes()

    def failing_write(image, path, useCompression=False):
        with open(path, "wb") as f:
            f.write(b"partial")
        os.write(2, b"[nrrd] couldn't write gzip data\n")  # what ITK's C++ code prints past Python
        if raises:
            raise RuntimeError("ITK ERROR: couldn't write gzip data")

    monkeypatch.setattr(image_io.sitk, "WriteImage", failing_write)
    with pytest.raises(OSError, match="the image writer failed without saying why") as exc:
        write_labelmap(np.ones((9, 9, 9), np.uint8), Geometry(), out, overwrite=True)
    assert exc.value.filename == str(out)  # the file the user asked for, not the temporary one
    assert sorted(os.listdir(tmp_path)) == ["seg.nii.gz"] and out.read_bytes() == original
    assert "nrrd" not in capfd.readouterr().err


def test_write_rejects_unsupported_extension_and_float_labels(tmp_path):
    with pytest.raises(InputError, match="unsupported output type"):
        write_labelmap(np.zeros((9, 9, 9), np.uint8), Geometry(), tmp_path / "seg.nhdr")
    with pytest.raises(ValueError, match="integer"):
        write_labelmap(np.zeros((9, 9, 9), np.float32), Geometry(), tmp_path / "seg.nrrd")
    assert os.listdir(tmp_path) == []
