"""segment_case: every output takes left and right from the cascade's body midline, not the volume's centre."""
import json

import numpy as np
import SimpleITK as sitk

from KidneyTumorSegLib.cascade import CascadeResult
from KidneyTumorSegLib.image_io import read_labelmap
from KidneyTumorSegLib.pipeline import SegmentOptions, segment_case
from KidneyTumorSegLib.segments import segments_from_labels


class MidlineCascade:
    """Stands in for a trained cascade: a solitary kidney with a confident tumor and an unsure cyst at x index
    40-55 of 64 (the patient-left half of the volume), and a body midline the cascade measured at x = 120 mm,
    further left still: the kidney is the right one."""

    def segment(self, image, progress=None, should_cancel=None, return_probabilities=False, log=None):
        labels = np.zeros(image.array.shape, np.uint8)
        labels[8:24, 10:30, 40:56] = 1
        labels[12:18, 14:20, 44:50] = 2
        labels[18:22, 22:26, 50:54] = 3
        confidence = np.where(labels == 3, 60, 230).astype(np.uint8)
        return CascadeResult(labels, image.geometry, [], "Found 1 kidney region(s).", {"total_s": 0.0},
                             confidence=confidence, midline_x=120.0)


def test_segments_measurements_and_uncertain_lesions_take_the_cascades_midline(tmp_path):
    arr = np.full((32, 40, 64), 40, np.int16)
    arr[:, :3] = -1000  # air in front: a CT's range of values
    ct = sitk.GetImageFromArray(arr)
    ct.SetSpacing((2.0, 2.0, 2.5))  # kidney centre x = 47.5 * 2 = 95 mm; the volume's centre 63 mm
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    options = SegmentOptions(model="unused", device="cpu", measure=True, min_confidence=0.5, mesh=True)
    result = segment_case(tmp_path / "ct.nii.gz", tmp_path / "out", MidlineCascade(), options)
    labels = read_labelmap(result.outputs["labelmap"])
    assert [s.name for s in segments_from_labels(labels.array, labels.geometry)[1]] == \
        ["Left kidney", "Left kidney tumor"]  # what the volume's centre would say
    header = sitk.ReadImage(str(result.outputs["seg_nrrd"]))
    names = sorted(header.GetMetaData(k) for k in header.GetMetaDataKeys() if k.endswith("_Name"))
    assert names == ["Right kidney", "Right kidney tumor"]
    m = json.loads(result.outputs["measurements_json"].read_text(encoding="utf-8"))
    assert [k["side"] for k in m["kidneys"]] == ["right"] and [x["side"] for x in m["lesions"]] == ["right"]
    assert [(u["kind"], u["side"]) for u in m["uncertain_lesions"]] == [("cyst", "right")]
    surfaces = sorted(k for k in result.outputs if k.startswith("mesh_"))
    assert surfaces and all("right" in k for k in surfaces), surfaces
    assert result.midline_x == 120.0  # for the Slicer module's import of the same case
