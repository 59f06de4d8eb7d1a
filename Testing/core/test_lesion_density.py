"""lesion_density: tumor components of water density become cysts (decision 116), alone and in the cascade,
with the HU, sizes and orientations known exactly."""
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cascade import Cascade, CascadeConfig, Stage
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.lesion_density import SIMPLE_FLUID_HU, cyst_hu_range, water_tumors_to_cysts
from KidneyTumorSegLib.models import ModelError, recommended_cyst_hu
from KidneyTumorSegLib.preprocessing import PreprocessingConfig, reorient

SPACING = (1.0, 1.0, 1.0)  # 1 mm^3 voxels: 500 voxels are 0.5 mL


def cube_scene():
    """(labels, ct): kidney at 150 HU holding four 10^3-voxel (1 mL) tumors at 10, 60, 20.5 and -9 HU and
    one 6^3-voxel (0.216 mL) tumor at 0 HU."""
    labels = np.zeros((20, 40, 70), np.uint8)
    ct = np.full(labels.shape, -100.0, np.float32)
    labels[2:18, 2:38, 2:68], ct[2:18, 2:38, 2:68] = Label.KIDNEY, 150.0
    for x, hu in zip((5, 20, 35, 50), (10.0, 60.0, 20.5, -9.0)):
        labels[5:15, 5:15, x:x + 10], ct[5:15, 5:15, x:x + 10] = Label.TUMOR, hu
    labels[5:11, 25:31, 5:11], ct[5:11, 25:31, 5:11] = Label.TUMOR, 0.0
    return labels, ct


def test_water_tumors_become_cysts_and_the_rest_stays():
    labels, ct = cube_scene()
    before = labels.copy()
    out, n = water_tumors_to_cysts(labels, ct, SPACING, SIMPLE_FLUID_HU)
    np.testing.assert_array_equal(labels, before)  # the input is not modified
    assert n == 2
    assert (out[5:15, 5:15, 5:15] == Label.CYST).all()      # 10 HU
    assert (out[5:15, 5:15, 50:60] == Label.CYST).all()     # -9 HU: the range is inclusive
    assert (out[5:15, 5:15, 20:30] == Label.TUMOR).all()    # 60 HU: solid
    assert (out[5:15, 5:15, 35:45] == Label.TUMOR).all()    # 20.5 HU: just above
    assert (out[5:11, 25:31, 5:11] == Label.TUMOR).all()    # water, but 0.216 mL: too small to characterise
    changed = out != labels
    assert set(np.unique(labels[changed])) == {Label.TUMOR}  # only tumors change, and only to cyst
    assert changed.sum() == 2000


def test_the_size_limit_is_in_millilitres_whatever_the_spacing():
    labels, ct = cube_scene()
    out, n = water_tumors_to_cysts(labels, ct, (3.0, 1.0, 1.0), SIMPLE_FLUID_HU)  # every voxel 3 mm^3
    assert n == 3 and (out[5:11, 25:31, 5:11] == Label.CYST).all()  # 216 voxels are now 0.648 mL
    out, n = water_tumors_to_cysts(labels, ct, SPACING, SIMPLE_FLUID_HU, min_ml=0.0)
    assert n == 3


def test_the_median_ignores_a_bright_rim_under_half_the_lesion():
    labels, ct = cube_scene()
    ct[5:15, 5:15, 5:15] = 400.0  # the 10 HU cube: a rim of 488 bright voxels around a 512-voxel water core
    ct[6:14, 6:14, 6:14] = 10.0
    assert water_tumors_to_cysts(labels, ct, SPACING, SIMPLE_FLUID_HU)[0][9, 9, 9] == Label.CYST
    ct[7:13, 7:13, 7:13] = 400.0  # now most of it is bright (an enhancing mass around a small core)
    assert water_tumors_to_cysts(labels, ct, SPACING, SIMPLE_FLUID_HU)[0][9, 9, 9] == Label.TUMOR


def test_touching_tumors_are_one_lesion_judged_together():
    labels, ct = cube_scene()
    labels[5:15, 5:15, 15:20], ct[5:15, 5:15, 15:20] = Label.TUMOR, 60.0  # joins the 10 HU and 60 HU cubes
    out, n = water_tumors_to_cysts(labels, ct, SPACING, SIMPLE_FLUID_HU)
    assert n == 1 and (out[5:15, 5:15, 5:30] == Label.TUMOR).all()  # median 60 HU: all of it stays tumor


@pytest.mark.parametrize("values, text", [((20, -9), "low < high"), ((1,), "two numbers"), (("a", 2), "two numbers"),
                                          ((float("nan"), 2), "finite"), (None, "two numbers"), ("12", "two numbers"),
                                          ([False, True], "two numbers"), ({"a": 1, "b": 2}, "two numbers")])
def test_a_wrong_range_is_refused(values, text):
    with pytest.raises(ValueError, match=text):
        cyst_hu_range(values)
    if values is not None:  # None is the config's "off"
        with pytest.raises(ValueError, match="cyst_hu"):
            CascadeConfig(cyst_hu=values)


def test_labels_and_ct_must_share_a_grid():
    labels, ct = cube_scene()
    with pytest.raises(ValueError, match="one grid"):
        water_tumors_to_cysts(labels, ct[:-1], SPACING, SIMPLE_FLUID_HU)


class ByIntensity(torch.nn.Module):
    """Logits that send each voxel to the class whose HU centre is nearest (a network with a known answer)."""

    def __init__(self, centres_hu):
        super().__init__()
        norm = (np.clip(np.asarray(centres_hu, float), -350.0, 650.0) + 350.0) / 1000.0
        self.register_buffer("centres", torch.tensor(norm, dtype=torch.float32).view(1, -1, 1, 1, 1))

    def forward(self, x):
        return -1e4 * (x - self.centres) ** 2


def water_tumor_cascade(cyst_hu):
    window = dict(normalization="window", window_level=150.0, window_width=1000.0)
    stage1 = Stage(ByIntensity([0.0, 150.0]), PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), **window),
                   ["background", "kidney"], (16, 16, 16))
    stage2 = Stage(ByIntensity([-100.0, 150.0, 10.0, 350.0]), PreprocessingConfig(target_spacing=None, **window),
                   ["background", "kidney", "tumor", "cyst"], (24, 24, 24))  # its "tumor" is water
    return Cascade(stage1, stage2, CascadeConfig(cyst_hu=cyst_hu), device="cpu")


def kidney_scene():
    """(ct, truth): one kidney (150 HU) at patient right holding a 10 HU lesion of about 4 mL (truth: cyst)."""
    shape = (40, 48, 64)
    z, y, x = np.indices(shape, dtype=float)
    kidney = ((x - 20) / 12) ** 2 + ((y - 24) / 14) ** 2 + ((z - 20) / 16) ** 2 <= 1
    lesion = ((x - 24) / 5) ** 2 + ((y - 24) / 5) ** 2 + ((z - 20) / 6) ** 2 <= 1
    truth = np.where(lesion, Label.CYST, np.where(kidney, Label.KIDNEY, Label.BACKGROUND)).astype(np.uint8)
    ct = np.select([lesion, kidney], [10.0, 150.0], -100.0).astype(np.float32)
    ct[:, :3] = -1000.0
    return ct, truth


@pytest.mark.parametrize("code", ["LPS", "RAS", "ASL"])
def test_the_cascade_calls_the_water_tumor_cyst_on_every_axis_order(code):
    ct, truth = kidney_scene()
    geometry = Geometry((2.0, 2.0, 2.0), (-60.0, -40.0, 10.0), np.eye(3))
    ct_v, g_v, _ = reorient(ct, Image(ct, geometry).geometry, code)
    truth_v, _, _ = reorient(truth, Image(ct, geometry).geometry, code)
    result = water_tumor_cascade(SIMPLE_FLUID_HU).segment(Image(ct_v, g_v))
    np.testing.assert_array_equal(result.labels, truth_v)
    assert "1 tumor(s) of water density (-9 to 20 HU) called cyst." in result.message  # the user is told
    # the confidence is the network's for the lesion it drew (tumor, p = 1), not for the kind the rule gave
    assert (result.confidence[truth_v == Label.CYST] == 255).all()
    without = water_tumor_cascade(None).segment(Image(ct_v, g_v))
    np.testing.assert_array_equal(without.labels, np.where(truth_v == Label.CYST, Label.TUMOR, truth_v))
    assert "water density" not in without.message


def test_a_model_entry_recommends_the_range_and_a_wrong_one_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    entry_file = folder / "models_entry.json"
    entry_file.write_text(json.dumps({"m": {"stage1": {}, "stage2": {}}}), encoding="utf-8")
    assert recommended_cyst_hu(str(folder)) is None
    entry_file.write_text(json.dumps({"m": {"cyst_hu": [-9, 20]}}), encoding="utf-8")
    assert recommended_cyst_hu(str(folder)) == (-9.0, 20.0)
    for wrong in ([20, -9], [1], "x", None):
        entry_file.write_text(json.dumps({"m": {"cyst_hu": wrong}}), encoding="utf-8")
        with pytest.raises(ModelError, match=f"cyst_hu of {entry_file} is wrong.*export the model"):
            recommended_cyst_hu(str(folder))
