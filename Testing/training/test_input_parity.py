"""Training/inference parity: the training cache's image is, bit for bit, the array the cascade gives the
network for the same case (stage 1: the whole CT; stage 2: the same kidney box), for every interpolation and
normalisation; and the box rule is the stage-2 config's, which the checkpoint stores."""
import hashlib
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib import cascade as cascade_module
from KidneyTumorSegLib.cascade import Cascade, CascadeConfig, Stage
from KidneyTumorSegLib.checkpoint import load_checkpoint
from KidneyTumorSegLib.geometry import Geometry, Image
from KidneyTumorSegLib.labels import Label
from KidneyTumorSegLib.network_input import reference_boxes
from KidneyTumorSegLib.preprocessing import PreprocessingConfig, reorient
from training.datasets import process_case

SHAPE = (22, 48, 70)        # z, y, x
SPACING = (2.2, 2.0, 3.0)   # x, y, z mm: 154 x 96 x 66 mm
# RAS-like (as KiTS/NIfTI files often are) with a slight tilt, so reorientation and oblique grids are exercised.
TILT = np.radians(4.0)
DIRECTION = np.array([[-np.cos(TILT), np.sin(TILT), 0], [-np.sin(TILT), -np.cos(TILT), 0], [0, 0, 1]])
GEOMETRY = Geometry(SPACING, (80.0, 40.0, -20.0), DIRECTION)
SETTINGS = {"linear, z-score": dict(image_interpolation="linear", mean=90.0, std=60.0),
            "bspline, window": dict(image_interpolation="bspline", normalization="window")}


def case():
    """(CT, labels) on GEOMETRY: two kidneys 50 mm apart, a tumor in one, a cyst in the other, noise."""
    z, y, x = np.indices(SHAPE, dtype=float)
    z, y, x = z * SPACING[2], y * SPACING[1], x * SPACING[0]
    lab = np.zeros(SHAPE, np.uint8)
    for cx in (40.0, 114.0):
        lab[((x - cx) / 12) ** 2 + ((y - 48) / 14) ** 2 + ((z - 33) / 20) ** 2 <= 1] = Label.KIDNEY
    lab[((x - 46) / 5) ** 2 + ((y - 48) / 5) ** 2 + ((z - 33) / 7) ** 2 <= 1] = Label.TUMOR
    lab[((x - 110) / 4) ** 2 + ((y - 44) / 4) ** 2 + ((z - 30) / 6) ** 2 <= 1] = Label.CYST
    ct = np.full(SHAPE, -90.0, np.float32)
    ct[:, :4] = -1000.0
    ct[lab > 0] = (150.0 + 40.0 * lab[lab > 0]).astype(np.float32)
    ct += np.random.default_rng(3).normal(0, 15, SHAPE).astype(np.float32)
    return Image(ct.astype(np.int16), GEOMETRY), Image(lab, GEOMETRY)


class NotCalled(torch.nn.Module):
    def forward(self, x):
        raise AssertionError("the network itself is replaced by the recorder")


def run_cascade(monkeypatch, ct, stage1_config, stage2_config, stage1_mask=None):
    """Run the cascade with the sliding window replaced by a recorder: returns (what each stage's network
    was given, the result). Stage 1 'finds' ``stage1_mask`` (on its input grid) or nothing."""
    given = {1: [], 2: []}
    stage1 = Stage(NotCalled(), stage1_config, ["background", "kidney"], (16, 16, 16))
    stage2 = Stage(NotCalled(), stage2_config, [label.name.lower() for label in Label], (16, 16, 16))

    def recorder(x, model, *args, **kwargs):
        n = 1 if model is stage1.model else 2
        given[n].append(np.array(x, copy=True))
        if n == 1:
            kidney = np.zeros(x.shape, np.float32) if stage1_mask is None else stage1_mask.astype(np.float32)
            return np.stack([1.0 - kidney, kidney])
        return np.stack([np.ones(x.shape, np.float32)] + [np.zeros(x.shape, np.float32)] * 3)

    monkeypatch.setattr(cascade_module, "sliding_window_inference", recorder)
    result = Cascade(stage1, stage2, CascadeConfig(postprocessing=None), device="cpu").segment(ct)
    return given, result


@pytest.mark.parametrize("setting", SETTINGS)
def test_stage1_network_input_is_the_training_cache_image(monkeypatch, setting):
    ct, labels = case()
    config = PreprocessingConfig(target_spacing=(4.0, 4.0, 4.0), **SETTINGS[setting])
    given, _ = run_cascade(monkeypatch, ct, config, PreprocessingConfig(**SETTINGS[setting]))
    (cached,) = process_case(ct, labels, 1, config)
    assert len(given[1]) == 1 and given[1][0].dtype == cached["image"].dtype == np.float32
    assert given[1][0].shape == cached["image"].shape == cached["geometry"].shape
    assert np.array_equal(given[1][0], cached["image"])  # bit for bit


@pytest.mark.parametrize("setting", SETTINGS)
def test_stage2_network_input_is_the_training_cache_image(monkeypatch, setting):
    """Stage 1 (at the CT's own spacing here) 'finds' exactly the reference kidneys, so the cascade's boxes
    from stage 1 must be the cache's boxes from the labels, and each box's input the cached crop."""
    ct, labels = case()
    config = PreprocessingConfig(target_spacing=(1.5, 1.5, 1.5), box_margin_mm=12.0, box_min_kidney_mm3=2_000.0,
                                 **SETTINGS[setting])
    stage1_config = PreprocessingConfig(target_spacing=None, **SETTINGS[setting])
    reference, grid, _ = reorient(labels.array, labels.geometry, stage1_config.orientation)
    given, result = run_cascade(monkeypatch, ct, stage1_config, config, stage1_mask=reference > 0)
    cached = process_case(ct, labels, 2, config)
    assert len(cached) == len(result.boxes) == len(given[2]) == 2
    for box, sample, x in zip(result.boxes, cached, given[2]):
        assert (box.start, box.stop) == sample["box"]
        assert x.dtype == sample["image"].dtype == np.float32 and x.shape == sample["image"].shape
        assert np.array_equal(x, sample["image"])  # bit for bit
    assert [(b.start, b.stop) for b in reference_boxes(reference, grid, config)] == [s["box"] for s in cached]


def test_box_rule_follows_the_config_in_training_and_inference(monkeypatch):
    ct, labels = case()
    base = dict(target_spacing=(1.5, 1.5, 1.5), mean=90.0, std=60.0, box_min_kidney_mm3=2_000.0)
    stage1_config = PreprocessingConfig(target_spacing=None, mean=90.0, std=60.0)
    reference = reorient(labels.array, labels.geometry, "LPS")[0] > 0
    for rule, n in (("overlap", 1), ("none", 2)):  # 30 mm margins: the two boxes overlap
        config = PreprocessingConfig(box_margin_mm=30.0, box_merge=rule, **base)
        _, result = run_cascade(monkeypatch, ct, stage1_config, config, stage1_mask=reference)
        assert [(b.start, b.stop) for b in result.boxes] == [s["box"] for s in process_case(ct, labels, 2, config)]
        assert len(result.boxes) == n
    config = PreprocessingConfig(**{**base, "box_min_kidney_mm3": 1e9})  # no kidney is large enough
    assert process_case(ct, labels, 2, config) == []
    assert run_cascade(monkeypatch, ct, stage1_config, config, stage1_mask=reference)[1].boxes == []


def test_the_shipped_checkpoint_records_its_box_rule_and_older_ones_get_the_old_constants(tmp_path):
    """The shipped stage 2 (trained after the box rule existed) records box_* itself. A checkpoint from before
    (no box_* keys) loads with the values the cascade and the cache had typed in: 15 mm, 5 mL, overlapping
    boxes merged."""
    from KidneyTumorSegLib.models import registry_path, resolve_model
    files = resolve_model("default")
    registry = json.loads(registry_path().read_text(encoding="utf-8"))
    entry = registry["models"][registry["default"]]["stage2"]
    assert hashlib.sha256(files.stage2.read_bytes()).hexdigest() == entry["sha256"]
    payload = torch.load(files.stage2, map_location="cpu", weights_only=True)
    assert {"box_margin_mm", "box_min_kidney_mm3", "box_merge"} <= set(payload["preprocessing"])
    shipped = load_checkpoint(files.stage2).preprocessing
    assert (shipped.box_margin_mm, shipped.box_min_kidney_mm3, shipped.box_merge) == (
        payload["preprocessing"]["box_margin_mm"], payload["preprocessing"]["box_min_kidney_mm3"],
        payload["preprocessing"]["box_merge"])
    payload["preprocessing"] = {k: v for k, v in payload["preprocessing"].items() if not k.startswith("box_")}
    old = tmp_path / "old_stage2.pt"
    torch.save(payload, old)
    pp = load_checkpoint(old).preprocessing
    assert (pp.box_margin_mm, pp.box_min_kidney_mm3, pp.box_merge) == (15.0, 5_000.0, "overlap")
