"""Confidence: the cascade's uint8 map, lesion means and --min-confidence, on maps whose values are set by hand."""
import numpy as np
import pytest

from KidneyTumorSegLib.confidence import (SCALE, UncertainLesion, component_means, confidence_map, confidence_text,
                                          confidence_value, segment_confidences, split_uncertain, threshold_text)
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.measurements import measure
from KidneyTumorSegLib.segments import segments_from_labels

K, T, C = int(Label.KIDNEY), int(Label.TUMOR), int(Label.CYST)
G = Geometry((1.0, 1.0, 2.0), (-40.0, -30.0, 0.0))


def two_kidneys():
    """Right kidney (low LPS x) with a 0.3-confidence tumor and a 0.9 cyst; left kidney with a 0.8 tumor."""
    lab = np.zeros((30, 60, 90), np.uint8)
    conf = np.full(lab.shape, 230, np.uint8)  # kidney and background: 0.90
    lab[5:25, 15:45, 5:35] = K    # right kidney: x indices 5..34, LPS x -35..-6
    lab[5:25, 15:45, 55:85] = K   # left kidney: LPS x 15..44
    lab[10:14, 20:26, 8:14] = T   # right tumor, 144 voxels = 0.288 mL
    conf[10:14, 20:26, 8:14] = round(0.3 * SCALE)
    lab[16:20, 30:34, 20:24] = C  # right cyst, 64 voxels
    conf[16:20, 30:34, 20:24] = round(0.9 * SCALE)
    lab[8:16, 20:30, 60:70] = T   # left tumor, 800 voxels
    conf[8:16, 20:30, 60:70] = round(0.8 * SCALE)
    return lab, conf


def test_confidence_map_is_the_probability_of_each_final_label():
    labels = np.array([[[0, 1, 2, 3, 2]]], np.uint8)
    probs = np.zeros((4, 1, 1, 5), np.float16)
    probs[:, 0, 0, :] = np.array([[0.7, 0.1, 0.2, 0.25, 0.5],   # background
                                  [0.1, 0.6, 0.2, 0.25, 0.0],   # kidney
                                  [0.1, 0.2, 0.5, 0.25, 0.5],   # tumor (the last voxel: relabelled, still 0.5)
                                  [0.1, 0.1, 0.1, 0.25, 0.0]])  # cyst
    region = (slice(0, 1), slice(0, 1), slice(1, 5))  # the first voxel lies outside every box
    out = confidence_map(labels, [(region, probs[(slice(None),) + region])])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, round(0.6 * 255), round(0.5 * 255), round(0.25 * 255), 128])


def test_component_means():
    comps = np.array([0, 1, 1, 2, 2, 2])
    conf = np.array([255, 0, 255, 51, 51, 102], np.uint8)
    np.testing.assert_allclose(component_means(comps, 2, conf), [1.0, 0.5, 68 / 255])


def test_split_uncertain_removes_only_the_lesions_below_the_threshold():
    lab, conf = two_kidneys()
    out, uncertain = split_uncertain(lab, conf, G, 0.5)
    (u,) = uncertain
    assert (u.id, u.kind, u.side) == ("uncertain_1", "tumor", "right")
    assert u.volume_ml == pytest.approx(144 * 2.0 / 1000)
    assert u.confidence == pytest.approx(round(0.3 * SCALE) / SCALE)
    centre = G.index_to_physical(np.array([10.5, 22.5, 11.5]))  # (x, y, z) index of the block's centre
    np.testing.assert_allclose(u.centroid_lps, centre)
    changed = out != lab
    assert np.array_equal(changed, (lab == T) & (conf < 0.5 * SCALE)) and (out[changed] == 0).all()
    assert split_uncertain(lab, conf, G, 0.0)[1] == []  # nothing is below 0
    all_out, all_uncertain = split_uncertain(lab, conf, G, 1.0)
    assert len(all_uncertain) == 3 and not np.isin(all_out, (T, C)).any()
    assert [x.volume_ml for x in all_uncertain] == sorted((x.volume_ml for x in all_uncertain), reverse=True)
    with pytest.raises(ValueError):
        split_uncertain(lab, conf, G, 1.5)


def test_measure_gives_each_lesion_its_mean_confidence():
    lab, conf = two_kidneys()
    m = measure(lab, G, confidence=conf)
    got = {(x.side, x.kind): x.confidence for x in m.lesions}
    assert got == pytest.approx({("right", "tumor"): round(0.3 * SCALE) / 255, ("right", "cyst"): 230 / 255,
                                 ("left", "tumor"): 204 / 255})
    assert all(x.confidence is None for x in measure(lab, G).lesions)  # no map, no confidence
    with pytest.raises(ValueError, match="differ in shape"):
        measure(lab, G, confidence=conf[:-1])


def test_segment_tags_list_each_lesion():
    lab, conf = two_kidneys()
    g = Image(lab, G).geometry
    seg_map, segments = segments_from_labels(lab, g)
    tags = segment_confidences(seg_map, segments, conf, g)
    assert tags["right_kidney_tumor"]["KidneyTumorSeg.Confidence"] == f"{round(0.3 * SCALE) / 255:.3f}"
    assert tags["left_kidney_tumor"]["Description"] == f"Model confidence {204 / 255:.2f}; lesions: 1.6 mL at 0.80"
    assert tags["left_kidney"]["Description"] == "Model confidence 0.90"
    marked = segment_confidences(seg_map, segments, conf, g, unsure_below=0.8)  # 0.3 below, 0.8 not
    assert marked["right_kidney_tumor"]["Description"].endswith("mL at 0.30 (uncertain)")
    assert marked["left_kidney_tumor"]["Description"].endswith("1.6 mL at 0.80")


def test_uncertain_lesion_round_trips_through_json():
    u = UncertainLesion("cyst", None, 1.25, (1.0, -2.0, 3.0), 0.41, "uncertain_2")
    d = u.to_dict()
    assert d["centroid_ras"] == [-1.0, 2.0, 3.0]
    assert UncertainLesion.from_dict(d) == u
    u.confidence = 0.56996  # below --min-confidence 0.57: written so, not rounded up to it
    assert u.to_dict()["confidence"] == 0.57 and u.to_dict(0.57)["confidence"] == 0.56996


@pytest.mark.parametrize("value, threshold, written", [
    (0.3, None, 0.3), (0.5697, None, 0.57), (0.5697, 0.57, 0.5697), (0.56996, 0.57, 0.56996), (0.5704, 0.57, 0.57),
    (0.57004, 0.57003, 0.57004), (0.1234, 0.57, 0.123), (None, 0.57, None), (0.5699999999999, 0.57, 0.5699999999999)])
def test_a_written_confidence_stays_on_its_side_of_the_threshold(value, threshold, written):
    assert confidence_value(value, threshold) == written


@pytest.mark.parametrize("value, threshold, text", [
    (0.30, 0.57, "0.30"), (0.567, None, "0.57"), (0.567, 0.57, "0.567"), (0.5697, 0.57, "0.569"),
    (0.56996, 0.57, "0.569"), (0.57, 0.57, "0.57"), (0.5704, 0.57, "0.57"), (0.5751, 0.575, "0.58"),
    (0.5745, 0.575, "0.57"), (0.574999, 0.575, "0.57"),
    (0.11699999999999999, 0.117, "0.116"), (0.575, 0.575, "0.575"), (0.5750004, 0.575, "0.58"),
    (0.57400004, 0.57400003, "0.57400004")])
def test_a_confidence_never_prints_on_the_other_side_of_the_threshold(value, threshold, text):
    assert confidence_text(value, threshold) == text


def test_a_threshold_prints_with_all_its_decimals():
    assert [threshold_text(t) for t in (0.57, 0.5, 0.575)] == ["0.57", "0.50", "0.575"]
