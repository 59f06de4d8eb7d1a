"""DICOM series as hospitals and archives deliver them, built from the shared real CT with pydicom/highdicom
(issue #18): ``from dicom_builder import ...`` in any test. The CT keeps its real orientation (LPS direction
diag(-1, -1, 1)); its origin is moved to quarter millimetres so that NIfTI (float32) and DICOM (decimal
strings) hold exactly the same geometry, and the same CT written as NIfTI is the reference."""
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

INTERCEPT = -1024  # stored value = HU + 1024, as scanners store CT


def small_ct(shared_data: Path, step: int = 2, z_range=(48, 112)) -> sitk.Image:
    """The shared example CT (3 mm), every ``step``-th voxel of slices ``z_range`` (the kidneys' level)."""
    ct = sitk.ReadImage(str(shared_data / "ct" / "example_ct.nii.gz"), sitk.sitkInt16)
    small = ct[::step, ::step, z_range[0]:z_range[1]:step]
    small.SetOrigin(tuple(float(np.round(v * 4) / 4) for v in small.GetOrigin()))
    return small


def coronal(image: sitk.Image) -> sitk.Image:
    """The same voxels as coronal slices (rows from head to feet), as a coronal reconstruction is stored."""
    return sitk.Flip(sitk.PermuteAxes(image, [0, 2, 1]), [False, True, False])


PATIENT = "Phantom^Kidney"


def _base(sop_class, study: str, series: str, number: int, description: str, image_type: str,
          frame_of_reference: Optional[str], modality: str = "CT") -> pydicom.Dataset:
    ds = pydicom.Dataset()
    if not PATIENT.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    if frame_of_reference:
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = \
        modality, PATIENT, "P18", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
        "20240101", "120000", "1", "", ""
    ds.SeriesNumber, ds.SeriesDescription, ds.Manufacturer = number, description, "test"
    ds.ImageType = image_type.split("\\")
    return ds


def write_series(image: sitk.Image, folder: Path, study: str, frame_of_reference: Optional[str] = "new",
                 number: int = 3, description: str = "Abdomen 6.0", image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
                 slices: Optional[Sequence[int]] = None, tilt_deg: float = 0.0, uid: Optional[str] = None,
                 name: str = "IM{k:04d}.dcm") -> List[pydicom.Dataset]:
    """Write ``image`` (int16 HU) as a classic CT series, one file per slice (``slices``: only those), with
    intact UIDs. ``frame_of_reference``: "new", a UID, or None (left out, as some anonymisers do).
    ``tilt_deg``: each slice shifted along the column direction, as a tilted gantry acquires them."""
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    sx, sy, sz = image.GetSpacing()
    arr = sitk.GetArrayFromImage(image)
    series, for_uid = uid or generate_uid(), generate_uid() if frame_of_reference == "new" else frame_of_reference
    datasets = []
    for k in (range(arr.shape[0]) if slices is None else slices):
        ds = _base(CTImageStorage, study, series, number, description, image_type, for_uid)
        ds.InstanceNumber = k + 1
        position = np.asarray(image.GetOrigin()) + k * sz * d[:, 2] + k * sz * np.tan(np.radians(tilt_deg)) * d[:, 1]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([d[:, 0], d[:, 1]])]
        ds.PixelSpacing = [f"{sy:g}", f"{sx:g}"]  # between rows, between columns
        ds.SliceThickness, ds.GantryDetectorTilt = f"{sz:g}", f"{tilt_deg:g}"
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *arr.shape[1:], 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = str(INTERCEPT), "1", "HU"
        ds.PixelData = (arr[k].astype(np.int32) - INTERCEPT).astype(np.int16).tobytes()
        ds.save_as(str(folder / name.format(k=k, n=number)), enforce_file_format=True)
        datasets.append(ds)
    return datasets


def write_dose_reports(folder: Path, study: str) -> None:
    """What a scanner adds to a study: a dose screen (secondary capture image) and a radiation dose SR."""
    folder.mkdir(parents=True, exist_ok=True)
    sc = _base(SecondaryCaptureImageStorage, study, generate_uid(), 900, "Dose Report", "DERIVED\\SECONDARY\\OTHER",
               None)
    sc.ConversionType, sc.InstanceNumber = "WSD", 1
    sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation = 64, 96, 1, "MONOCHROME2"
    sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
    sc.PixelData = np.random.default_rng(0).integers(0, 255, (64, 96), np.uint8).tobytes()
    sc.save_as(str(folder / "dose_screen.dcm"), enforce_file_format=True)
    sr = _base("1.2.840.10008.5.1.4.1.1.88.67", study, generate_uid(), 901, "Dose Info", "", None, modality="SR")
    del sr.ImageType
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag, sr.InstanceNumber = "CONTAINER", "COMPLETE", "UNVERIFIED", 1
    sr.save_as(str(folder / "dose_sr.dcm"), enforce_file_format=True)


def write_study(image: sitk.Image, folder: Path, per_series_folders: bool = False) -> dict:
    """A whole study: localizer (2 images), the axial CT, a coronal reconstruction with MORE images than the
    axial one, and the dose reports; in one folder, or one subfolder per series. Returns the axial UIDs."""
    study = generate_uid()
    sub = (lambda n: folder / n) if per_series_folders else (lambda n: folder)
    cor = coronal(image)
    write_series(cor, sub("1_localizer"), study, number=1, description="Topogram",
                 image_type="ORIGINAL\\PRIMARY\\LOCALIZER", slices=[10, 30], name="LOC{k:04d}.dcm")
    axial = write_series(image, sub("3_axial"), study, number=3)
    write_series(sitk.Resample(cor, [cor.GetSize()[0], cor.GetSize()[1], 2 * cor.GetSize()[2]],
                               sitk.Transform(), sitk.sitkNearestNeighbor, cor.GetOrigin(),
                               cor.GetSpacing()[:2] + (cor.GetSpacing()[2] / 2,), cor.GetDirection()),
                 sub("4_coronal"), study, number=4, description="Cor 3.0",
                 image_type="DERIVED\\SECONDARY\\REFORMATTED", name="COR{k:04d}.dcm")
    write_dose_reports(sub("900_dose"), study)
    return {"study": study, "series": axial[0].SeriesInstanceUID}
