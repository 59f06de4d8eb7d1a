"""NIfTI variants met in real data: each read like the plain file, or refused in one sentence (issue #15, item 4).

Every variant is the plain file SimpleITK wrote with header bytes changed, so the plain read is the reference
for voxels and geometry. ``capfd`` sees the process's file descriptor 2, where ITK's C++ warnings would go.
"""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib import nifti_io
from KidneyTumorSegLib.errors import InputError
from KidneyTumorSegLib.image_io import read_image, read_labelmap
from phantoms import NIFTI1, ellipsoid_labels, nifti_variant, phantom_ct, read_nifti1, rotation, sheared_srow

EXACT = 1e-6  # the variants that change no geometry field: as exact as float32 headers allow


def _one_sentence(text: str) -> bool:
    return text.count(". ") == 0 and text.endswith(".")


def _no_itk_words(err: str) -> None:
    assert "ITK" not in err and "WARNING" not in err and "nifti" not in err.lower(), err


@pytest.fixture
def plain(tmp_path):
    """An oblique int16 CT phantom as SimpleITK writes it (qform and sform), and how read_image reads it."""
    labels = ellipsoid_labels((20, 28, 24))
    img = sitk.GetImageFromArray(np.rint(phantom_ct(labels)).astype(np.int16))
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((31.5, -12.25, 140.0))
    img.SetDirection(rotation(12, -7, 25).ravel())
    path = tmp_path / "plain.nii.gz"
    sitk.WriteImage(img, str(path))
    return path, read_image(path)


def _read(path):
    """read_image with its notes, checking that the file is left as it was."""
    before, notes = path.read_bytes(), []
    image = read_image(path, warn=notes.append)
    assert path.read_bytes() == before
    return image, notes


def _same(image, reference, atol=EXACT):
    assert image.array.dtype == np.float32 and np.array_equal(image.array, reference.array)
    assert image.geometry.is_close(reference.geometry, atol=atol), (image.geometry, reference.geometry)


@pytest.mark.parametrize("name, big_endian", [("s.nii.gz", False), ("s.nii", False), ("s_be.nii.gz", True)])
def test_near_orthonormal_sform_is_made_orthonormal_with_one_note(tmp_path, plain, capfd, name, big_endian):
    src, reference = plain
    header, _ = read_nifti1(src)
    path = nifti_variant(src, tmp_path / name, big_endian=big_endian, qform_code=0,
                         srow=sheared_srow(header, 4e-4))
    with pytest.raises(RuntimeError, match="orthonormal direction cosines"):  # what ITK alone does
        sitk.ReadImage(str(path))
    capfd.readouterr()
    image, notes = _read(path)
    _same(image, reference, atol=nifti_io.ORTHONORMAL_TOL)
    d = image.geometry.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert len(notes) == 1 and _one_sentence(notes[0]), notes
    assert str(path) in notes[0] and "0.023 degrees from perpendicular" in notes[0] and "moves no voxel" in notes[0]
    _no_itk_words(capfd.readouterr().err)


def test_the_correction_is_the_nearest_orthonormal_matrix_and_its_shift_is_reported(tmp_path, plain):
    src, reference = plain
    header, _ = read_nifti1(src)
    path = nifti_variant(src, tmp_path / "s.nii.gz", qform_code=0, srow=sheared_srow(header, 8e-4))
    spacing, _, direction = nifti_io.sform_geometry(path, nifti_io.read_header(path))
    size = reference.geometry.size
    rotation_, note = nifti_io.nearest_orthonormal(path, direction, spacing, size)
    # Nearest: no rotation in a cloud around it is closer to the header's directions (Frobenius norm).
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.normal(0, 1e-3, 3)
        k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
        other = rotation_ @ (np.eye(3) + k + k @ k / 2)
        assert np.linalg.norm(rotation_ - direction) <= np.linalg.norm(other - direction) + 1e-12
    # The shift it reports is the largest over all voxels (checked on the grid's every voxel).
    ijk = np.indices(size).reshape(3, -1) * np.asarray(spacing)[:, None]
    moved = np.linalg.norm((rotation_ - direction) @ ijk, axis=0).max()
    assert f"moves no voxel more than {moved:.2g} mm" in note


def test_sheared_beyond_the_tolerance_is_refused_in_one_sentence(tmp_path, plain, capfd):
    src, _ = plain
    header, _ = read_nifti1(src)
    path = nifti_variant(src, tmp_path / "sheared.nii.gz", qform_code=0, srow=sheared_srow(header, 5e-3))
    before, listing = path.read_bytes(), sorted(os.listdir(tmp_path))
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert _one_sentence(message) and "sheared voxel axes" in message and "0.29 degrees" in message
    assert "resample it to an orthogonal grid" in message
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == listing
    _no_itk_words(capfd.readouterr().err)


def test_the_tolerance_edge(tmp_path, plain):
    src, _ = plain
    header, _ = read_nifti1(src)
    inside = nifti_variant(src, tmp_path / "in.nii.gz", qform_code=0, srow=sheared_srow(header, 0.9e-3))
    outside = nifti_variant(src, tmp_path / "out.nii.gz", qform_code=0, srow=sheared_srow(header, 1.1e-3))
    assert len(_read(inside)[1]) == 1
    with pytest.raises(InputError, match="sheared voxel axes"):
        read_image(outside)


def _scaled(src, dst, slope, inter, stored_from_hu, dtype=np.int16, **fields):
    header, data = read_nifti1(src)
    hu = np.frombuffer(data, np.int16).astype(float)
    stored = np.asarray(stored_from_hu(hu)).astype(np.dtype(dtype).newbyteorder("<"))
    return nifti_variant(src, dst, voxels=stored.tobytes(), scl_slope=slope, scl_inter=inter,
                         datatype={np.int16: 4, np.uint16: 512, np.float32: 16}[dtype],
                         bitpix=np.dtype(dtype).itemsize * 8, **fields)


@pytest.mark.parametrize("slope, inter, stored, dtype", [
    (1.0, -2048.0, lambda hu: hu + 2048, np.uint16),       # unsigned storage with an intercept
    (0.5, -1024.0, lambda hu: 2 * (hu + 1024), np.int16),  # a slope
    (0.0, 0.0, lambda hu: hu, np.int16),                   # slope 0: unscaled (nifti1.h)
    (np.nan, np.nan, lambda hu: hu, np.float32),           # nibabel's "unscaled" for float data
])
def test_scaled_voxels_read_as_the_plain_file(tmp_path, plain, capfd, slope, inter, stored, dtype):
    src, reference = plain
    image, notes = _read(_scaled(src, tmp_path / "scaled.nii.gz", slope, inter, stored, dtype))
    _same(image, reference)
    assert notes == []
    _no_itk_words(capfd.readouterr().err)


def test_scaling_on_the_corrected_path_too(tmp_path, plain):
    """The voxels of a re-orthonormalised file are read here, not by ITK: scaled the same way."""
    src, reference = plain
    header, _ = read_nifti1(src)
    path = _scaled(src, tmp_path / "both.nii", 0.5, -1024.0, lambda hu: 2 * (hu + 1024), qform_code=0,
                   srow=sheared_srow(header, 4e-4))
    image, notes = _read(path)
    _same(image, reference, atol=nifti_io.ORTHONORMAL_TOL)
    assert len(notes) == 1


@pytest.mark.parametrize("slope, inter", [(2.0, np.nan), (1.0, np.inf), (np.inf, 0.0), (0.0, 5.0)])
def test_unusable_scaling_is_refused_in_one_sentence(tmp_path, plain, slope, inter):
    src, _ = plain
    path = nifti_variant(src, tmp_path / "bad.nii.gz", scl_slope=slope, scl_inter=inter)
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert _one_sentence(message) and "invalid or ambiguous intensity scaling" in message
    assert "set scl_slope 1" in message


def test_qform_only_reads_like_the_plain_file(tmp_path, plain):
    src, reference = plain
    image, notes = _read(nifti_variant(src, tmp_path / "q.nii.gz", sform_code=0, srow=np.zeros((3, 4))))
    _same(image, reference)
    assert notes == []


@pytest.mark.parametrize("dim0", [4, 5])
def test_singleton_4th_and_5th_dimensions_read_as_3d(tmp_path, plain, dim0):
    src, reference = plain
    header, _ = read_nifti1(src)
    dim = header["dim"].copy()
    dim[0], dim[4:6] = dim0, 1
    image, notes = _read(nifti_variant(src, tmp_path / "d.nii.gz", dim=dim))
    _same(image, reference)
    corrected, _ = _read(nifti_variant(src, tmp_path / "ds.nii.gz", dim=dim, qform_code=0,
                                       srow=sheared_srow(header, 4e-4)))
    _same(corrected, reference, atol=nifti_io.ORTHONORMAL_TOL)


def test_two_time_points_are_still_refused(tmp_path, plain):
    src, _ = plain
    header, data = read_nifti1(src)
    dim = header["dim"].copy()
    dim[0], dim[4] = 4, 2
    for name, fields in [("t.nii.gz", {}), ("ts.nii.gz", dict(qform_code=0, srow=sheared_srow(header, 4e-4)))]:
        path = nifti_variant(src, tmp_path / name, voxels=data + data, dim=dim, **fields)
        with pytest.raises(InputError, match="4D image"):
            read_image(path)


def test_no_orientation_and_odd_sform_scales_are_said_in_our_words(tmp_path, plain, capfd):
    src, reference = plain
    header, _ = read_nifti1(src)
    image, notes = _read(nifti_variant(src, tmp_path / "n.nii.gz", qform_code=0, sform_code=0))
    assert np.array_equal(image.array, reference.array) and image.geometry.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert len(notes) == 1 and "no orientation" in notes[0] and _one_sentence(notes[0])
    srow = header["srow"].copy()
    srow[:, 1] *= 1.01  # column 1 now says 0.909 mm, pixdim 0.9 mm: ITK warns on its own and uses pixdim
    image, notes = _read(nifti_variant(src, tmp_path / "z.nii.gz", srow=srow))
    assert image.geometry.spacing == reference.geometry.spacing
    assert len(notes) == 1 and "0.909" in notes[0] and "pixdim" in notes[0] and _one_sentence(notes[0])
    _no_itk_words(capfd.readouterr().err)


def test_notes_reach_read_labelmap_too(tmp_path, plain):
    src, reference = plain
    labels = sitk.GetImageFromArray(ellipsoid_labels((20, 28, 24)))
    labels.CopyInformation(sitk.ReadImage(str(src)))
    sitk.WriteImage(labels, str(tmp_path / "lab.nii.gz"))
    header, _ = read_nifti1(tmp_path / "lab.nii.gz")
    path = nifti_variant(tmp_path / "lab.nii.gz", tmp_path / "lab_s.nii.gz", qform_code=0,
                         srow=sheared_srow(header, 4e-4))
    notes = []
    image = read_labelmap(path, warn=notes.append)
    assert image.array.dtype == np.uint8 and np.array_equal(image.array, ellipsoid_labels((20, 28, 24)))
    assert image.geometry.is_close(reference.geometry, atol=nifti_io.ORTHONORMAL_TOL) and len(notes) == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_voxels_and_geometry_read_here_agree_with_itk(tmp_path, dtype):
    """On files ITK reads, this module's own reading gives ITK's voxels (type included) and geometry."""
    arr = np.random.default_rng(1).integers(-100, 100, (9, 10, 11)).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.25, 3.0))
    img.SetOrigin((-5.0, 17.5, 3.25))
    img.SetDirection(rotation(-20, 35, 170).ravel())
    path = tmp_path / "t.nii"
    sitk.WriteImage(img, str(path))
    itk = sitk.ReadImage(str(path))
    header = nifti_io.read_header(path)
    voxels = nifti_io.read_voxels(path, header)
    assert voxels.dtype == sitk.GetArrayViewFromImage(itk).dtype and np.array_equal(voxels, arr)
    spacing, origin, direction = nifti_io.sform_geometry(path, header)
    np.testing.assert_allclose(spacing, itk.GetSpacing(), atol=EXACT)
    np.testing.assert_allclose(origin, itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(direction.ravel(), itk.GetDirection(), atol=EXACT)


def _nifti2(src, dst, **fields):
    """The NIfTI-1 file ``src`` rewritten as NIfTI-2 (nifti2.h: 540-byte header, 64-bit fields)."""
    h, data = read_nifti1(src)
    for name, value in fields.items():
        h[name] = value
    out = bytearray(544)
    def put(offset, kind, values):
        b = np.asarray(values, kind).tobytes()
        out[offset:offset + len(b)] = b
    put(0, "<i4", 540)
    out[4:12] = b"n+2\0\r\n\x1a\n"
    for offset, kind, name in [(12, "<i2", "datatype"), (14, "<i2", "bitpix"), (16, "<i8", "dim"),
                               (104, "<f8", "pixdim"), (176, "<f8", "scl_slope"), (184, "<f8", "scl_inter"),
                               (344, "<i4", "qform_code"), (348, "<i4", "sform_code"), (352, "<f8", "quatern"),
                               (376, "<f8", "qoffset"), (400, "<f8", "srow"), (500, "<i4", "xyzt_units")]:
        put(offset, kind, h[name])
    put(168, "<i8", 544)
    dst.write_bytes(bytes(out) + data)
    return dst


def test_nifti2_is_refused_in_one_sentence_and_checked_for_truncation(tmp_path, plain):
    """ITK 5.4 reads NIfTI-1 only: a NIfTI-2 file gets a sentence saying so, not "corrupt"."""
    src, _ = plain
    header, _ = read_nifti1(src)
    for name, fields in [("two.nii", {}), ("two_s.nii", dict(qform_code=0, srow=sheared_srow(header, 4e-4)))]:
        with pytest.raises(InputError) as info:
            read_image(_nifti2(src, tmp_path / name, **fields))
        assert "is a NIfTI-2 file" in str(info.value) and _one_sentence(str(info.value))
    whole = (tmp_path / "two.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(whole[:-100])
    with pytest.raises(InputError, match=f"truncated \\({len(whole) - 100} of {len(whole)} bytes\\)"):
        read_image(tmp_path / "cut.nii")


def test_header_record_matches_nifti1_h():
    assert NIFTI1.fields["srow"][1] == 280 and NIFTI1.fields["qform_code"][1] == 252
    for name, (offset, kind, count) in nifti_io.LAYOUTS[1].items():
        assert NIFTI1.fields[name][1] == offset, name


@pytest.mark.parametrize("offset", [60, 200, "middle"])
def test_a_damaged_gzip_stream_is_refused_in_one_sentence(tmp_path, plain, offset):
    """zlib.error (a broken deflate stream) is neither OSError nor EOFError: it once escaped as a traceback."""
    data = bytearray(plain[0].read_bytes())
    at = len(data) // 2 if offset == "middle" else offset
    data[at:at + 40] = bytes(b ^ 0xFF for b in data[at:at + 40])
    bad = tmp_path / "damaged.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        read_image(bad)
    assert "damaged.nii.gz" in str(err.value) and _one_sentence(str(err.value))
