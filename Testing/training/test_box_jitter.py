"""Stage-2 crops cut wider than the box rule, and patches cut back to a (moved) kidney box (decision 95): the
inference box rule stays as it was, the rule's box is found exactly inside the wider crop, and what lies beyond the
moved box becomes padding in training patches and is left out of validation."""
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.preprocessing import PreprocessingConfig
from training.datasets import process_case
from training.datasets.cache import load_entry, preprocess_dataset
from training.datasets.layouts import discover
from training.recipe import TrainingRecipe
from training.sampling import PatchPlan, PatchSampler, crop_with_padding
from training.datasets.cache import box_slices
from training.validation import validate
from test_input_parity import case

CONFIG = dict(target_spacing=(1.5, 1.5, 1.5), mean=90.0, std=60.0, box_margin_mm=12.0, box_min_kidney_mm3=2_000.0,
              box_merge="none")


def test_a_wider_crop_holds_the_rule_s_crop_exactly_where_inner_says():
    ct, labels = case()
    config = PreprocessingConfig(**CONFIG)
    plain = process_case(ct, labels, 2, config)
    wide = process_case(ct, labels, 2, config, crop_margin_mm=30.0)
    assert len(plain) == len(wide) == 2 and all(s["inner"] is None for s in plain)
    for p, w in zip(plain, wide):
        assert all(a <= b for a, b in zip(w["box"][0], p["box"][0]))
        assert all(a >= b for a, b in zip(w["box"][1], p["box"][1]))
        inner = box_slices(w["inner"], w["labels"].shape)
        # The rule's box inside the wider crop has the rule's crop's size, within a voxel of resampling phase,
        # and holds every kidney voxel the rule's crop holds.
        assert all(abs((s.stop - s.start) - n) <= 1 for s, n in zip(inner, p["labels"].shape))
        assert (w["labels"][inner] == 1).sum() == pytest.approx((p["labels"] == 1).sum(), rel=0.05)
        # Same place: the centre of the inner box in the wide crop is the centre of the rule's crop (LPS mm).
        centre = lambda g, lo, hi: g.index_to_physical((np.asarray(lo[::-1], float) + hi[::-1]) / 2 - 0.5)
        assert np.allclose(centre(w["geometry"], w["inner"][:3], w["inner"][3:]),
                           centre(p["geometry"], [0, 0, 0], list(p["labels"].shape)), atol=1e-6)
    with pytest.raises(ValueError, match="below the box rule"):
        process_case(ct, labels, 2, config, crop_margin_mm=5.0)


def test_the_cache_records_the_wider_crop_but_keeps_the_box_rule(tmp_path):
    ct, labels = case()
    folder = tmp_path / "data" / "case_00000"
    folder.mkdir(parents=True)
    from KidneyTumorSegLib.image_io import write_image, write_labelmap
    write_image(ct.array, ct.geometry, folder / "imaging.nii.gz")
    write_labelmap(labels.array, labels.geometry, folder / "segmentation.nii.gz")
    cases = discover(tmp_path / "data")
    index = preprocess_dataset(cases, 2, PreprocessingConfig(**CONFIG), tmp_path / "c", crop_margin_mm=30.0)
    assert index["config"]["box_margin_mm"] == 12.0 and index["crop_margin_mm"] == 30.0
    entry = index["cases"]["case_00000"]["entries"][0]
    assert len(entry["inner_zyx"]) == 6
    assert np.allclose(load_entry(tmp_path / "c", entry)["inner_zyx"], entry["inner_zyx"])
    plain = preprocess_dataset(cases, 2, PreprocessingConfig(**CONFIG), tmp_path / "p")
    assert "crop_margin_mm" not in plain and "inner_zyx" not in plain["cases"]["case_00000"]["entries"][0]
    assert plain["config_hash"] != index["config_hash"]
    # Boxes that only move inwards ([lo, 0]) need no wider crop, but still the rule's box recorded in each.
    same = preprocess_dataset(cases, 2, PreprocessingConfig(**CONFIG), tmp_path / "s", crop_margin_mm=12.0)
    assert same["crop_margin_mm"] == 12.0 and "inner_zyx" in same["cases"]["case_00000"]["entries"][0]
    for stage, margin in ((2, 5.0), (1, 30.0)):
        with pytest.raises(ValueError, match="crop_margin_mm"):
            preprocess_dataset(cases, stage, PreprocessingConfig(**CONFIG), tmp_path / f"bad{stage}",
                               crop_margin_mm=margin)


def _wide_entry(tmp_path):
    """A 20^3 crop at 2 mm whose every voxel has its own value (its index): the rule's box is voxels 5..15 on every
    axis, a kidney cube 8..12 inside it, an auxiliary voxel outside it."""
    image = np.arange(20 ** 3, dtype=np.float32).reshape(20, 20, 20)
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[8:12, 8:12, 8:12] = 1
    labels[2, 10, 10] = 4
    np.savez(tmp_path / "c_k0.npz", image=image, labels=labels, spacing=np.array([2.0, 2.0, 2.0]),
             inner_zyx=np.array([5.0, 5.0, 5.0, 15.0, 15.0, 15.0]), locations_1=np.argwhere(labels == 1),
             locations_4=np.argwhere(labels == 4))
    (tmp_path / "index.json").write_text(json.dumps({"stage": 2}))
    return [{"file": "c_k0.npz", "case_id": "c", "class_voxels": {"1": 64, "4": 1}, "shape": [20, 20, 20]}], image


def test_without_jitter_the_rule_s_box_is_the_volume_padded_with_its_own_minimum(tmp_path):
    entries, image = _wide_entry(tmp_path)
    box = image[5:15, 5:15, 5:15]
    sampler = PatchSampler(tmp_path, entries, (20, 20, 20), 1, 0.0, [False], augmentation=None)
    for seed in range(5):
        patch = sampler.make_patch(PatchPlan(0, -1, seed))
        img, lab = patch["image"][0].numpy(), patch["labels"].numpy()
        kept = np.isin(img, box) & (img != box.min())
        lo, hi = np.argwhere(kept).min(axis=0), np.argwhere(kept).max(axis=0) + 1
        assert (hi - lo).tolist() == [10, 10, 10] and kept.sum() == 999  # the box whole, nothing else of the crop
        assert (img[~kept] == box.min()).all()  # padded as inference pads a box: with its minimum
        assert (lab == 1).sum() == 64 and (lab == 4).sum() == 0  # the auxiliary voxel lay outside the box


def test_patches_smaller_than_the_box_stay_inside_it_as_inference_windows_do(tmp_path):
    entries, image = _wide_entry(tmp_path)
    box = set(image[5:15, 5:15, 5:15].ravel().tolist())
    sampler = PatchSampler(tmp_path, entries, (8, 8, 8), 1, 0.0, [False], augmentation=None)
    for plan in [PatchPlan(0, -1, seed) for seed in range(10)] + [PatchPlan(0, 1, seed) for seed in range(10)]:
        values = sampler.make_patch(plan)["image"][0].numpy().ravel().tolist()
        assert len(set(values)) == 512 and set(values) <= box  # a block of the box: no padding, nothing outside
    # A class whose only voxel lies outside the box centres no patch there: the patch is drawn inside the box.
    values = sampler.make_patch(PatchPlan(0, 4, 3))["image"][0].numpy().ravel().tolist()
    assert set(values) <= box


def test_jitter_moves_each_face_within_its_range_and_never_cuts_into_the_kidney(tmp_path):
    entries, image = _wide_entry(tmp_path)
    sampler = PatchSampler(tmp_path, entries, (20, 20, 20), 1, 0.0, [False], augmentation=None,
                           box_jitter_mm=(-4.0, 6.0))  # faces move -2..+3 voxels
    sizes, firsts = set(), set()
    for seed in range(40):
        img = sampler.make_patch(PatchPlan(0, -1, seed))
        lab, img = img["labels"].numpy(), img["image"][0].numpy()
        corner = np.unravel_index(int(img.min()), image.shape)  # the padding is the box's minimum: its low corner
        inside = np.argwhere(img > img.min())  # the box but its corner voxel: the same extent
        size = inside.max(axis=0) + 1 - inside.min(axis=0)
        assert all(2 <= c <= 7 for c in corner) and all(6 <= n <= 16 for n in size)
        assert (lab == 1).sum() == 64  # the kidney (3 voxels inside the rule's box) stays
        sizes.add(tuple(size))
        firsts.add(corner)
    assert len(sizes) > 20 and len(firsts) > 10  # the faces move independently from patch to patch


def test_validation_judges_a_wide_crop_on_the_rule_s_box_only(tmp_path):
    entries, _ = _wide_entry(tmp_path)

    class AllKidney(torch.nn.Module):  # kidney everywhere: Dice = 2 * 64 / (box voxels + 64)
        def forward(self, x):
            out = torch.zeros((x.shape[0], 5) + tuple(x.shape[2:]))
            out[:, 1] = 1.0
            return out

    from training.distributed import DistInfo
    scores = validate(AllKidney(), tmp_path, entries, ["background", "kidney", "tumor", "cyst", "aux_liver"],
                      (8, 8, 8), torch.device("cpu"), DistInfo(0, 1, 0), amp=False)
    assert scores["val_dice_kidney"] == pytest.approx(2 * 64 / (1000 + 64))


def test_box_slices_and_the_recipe_key():
    assert box_slices([0.5, 1.2, -3.0, 2.5, 4.6, 40.0], (10, 10, 10)) == (slice(0, 2), slice(1, 5), slice(0, 10))
    assert TrainingRecipe(box_jitter_mm=[-10, 15]).box_jitter_mm == (-10.0, 15.0)
    for bad in ([5, -5], [1], "1,2", [True, 2]):
        with pytest.raises(ValueError, match="box_jitter_mm"):
            TrainingRecipe(box_jitter_mm=bad)
    assert crop_with_padding(np.arange(4), [-1], [3], 9).tolist() == [9, 0, 1]
