"""training/ambiguity.py: the tumor's separation from its kidney, the marginal loss, and their wiring (decision 86)."""
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.networks.blocks import NetworkOutput
from training.ambiguity import SUPPRESSED, merge_classes, merge_output, merge_region, tumor_separation
from training.losses import LossConfig, SegmentationLoss, boundary_head_loss
from training.optim import train_step
from training.recipe import TrainingRecipe
from training.sampling import PatchPlan, PatchSampler, epoch_loader

KIDNEY, TUMOR = 1, 2


def _crop(tumor_mean: float, seed: int = 0):
    """A 30^3 crop at 2 mm: a kidney slab of mean 0.5 and a tumor cube inside it, noise SD 0.05 on both."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:25, 5:25, 5:25] = KIDNEY
    labels[10:18, 10:18, 10:18] = TUMOR
    image = rng.normal(0.5, 0.05, labels.shape)
    image[labels == TUMOR] = rng.normal(tumor_mean, 0.05, int((labels == TUMOR).sum()))
    return image.astype(np.float16), labels


def test_separation_is_the_mean_difference_over_the_pooled_sd():
    image, labels = _crop(0.5 + 0.05 * 3.0)  # three noise SDs brighter
    assert tumor_separation(image, labels, (2.0, 2.0, 2.0), TUMOR, KIDNEY) == pytest.approx(3.0, rel=0.1)
    faint = tumor_separation(*_crop(0.5 + 0.05 * 0.2), (2.0, 2.0, 2.0), TUMOR, KIDNEY)
    assert faint < 0.5
    no_tumor = labels.copy()
    no_tumor[no_tumor == TUMOR] = KIDNEY
    assert tumor_separation(image, no_tumor, (2.0, 2.0, 2.0), TUMOR, KIDNEY) is None
    alone = np.where(labels == TUMOR, TUMOR, 0).astype(np.uint8)  # no kidney beside the tumor
    assert tumor_separation(image, alone, (2.0, 2.0, 2.0), TUMOR, KIDNEY) is None


def test_merged_voxels_give_dst_the_sum_of_both_probabilities_and_keep_everything_else():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 3, 3), torch.randint(0, 4, (2, 3, 3, 3))
    region = torch.zeros(2, 3, 3, 3, dtype=torch.bool)
    region[0, :2] = True
    out, t = merge_classes(logits, target, region, TUMOR, KIDNEY)
    p, q = logits.softmax(1), out.softmax(1)
    inside = region[0]
    assert torch.allclose(q[0, KIDNEY][inside], (p[0, KIDNEY] + p[0, TUMOR])[inside], atol=1e-6)
    assert torch.all(q[0, TUMOR][inside] == 0) and float(out[0, TUMOR][inside].max()) == SUPPRESSED
    assert torch.equal(out[0][:, ~inside], logits[0][:, ~inside]) and torch.equal(out[1], logits[1])
    assert not (t[region] == TUMOR).any() and torch.equal(t[~region], target[~region])
    with pytest.raises(ValueError, match="two of the 4 classes"):
        merge_classes(logits, target, region, TUMOR, TUMOR)
    with pytest.raises(ValueError, match="does not match the labels"):
        merge_classes(logits, target, region[:1], TUMOR, KIDNEY)


def test_the_region_is_the_flagged_tumor_and_the_kidney_touching_it():
    target = torch.zeros(2, 1, 1, 9, dtype=torch.long)
    target[:, 0, 0, 1:8] = KIDNEY
    target[:, 0, 0, 4] = TUMOR
    target[:, 0, 0, 0] = 4  # another class beside the kidney: never merged
    region = merge_region(target, torch.tensor([True, False]), TUMOR, KIDNEY)
    assert region[0, 0, 0].tolist() == [False, False, False, True, True, True, False, False, False]
    assert not region[1].any()  # the unflagged sample


def _one_voxel_case():
    """One sample: a faint tumor (two voxels) in a kidney row; logits that call healthy kidney tumor, or not."""
    target = torch.full((1, 1, 1, 8), KIDNEY)
    target[0, 0, 0, :2] = TUMOR
    return target


def test_the_marginal_loss_forgives_kidney_or_tumor_on_the_faint_tumor_only():
    """On the faint tumor the loss depends on p(kidney) + p(tumor) alone; on the healthy kidney of the same
    flagged sample, calling it tumor still costs (the error decision 86 aims at)."""
    loss = SegmentationLoss(LossConfig(num_classes=4, boundary_weight=1.0))
    target, flag = _one_voxel_case(), torch.tensor([True])

    def merged_loss(kidney_logit_on_tumor, tumor_logit_on_kidney):
        x = torch.zeros(1, 4, 1, 1, 8)
        x[:, KIDNEY], x[:, TUMOR] = 2.0, 0.0
        x[0, KIDNEY, 0, 0, :2], x[0, TUMOR, 0, 0, :2] = kidney_logit_on_tumor, 2.0 - kidney_logit_on_tumor
        x[0, TUMOR, 0, 0, 5:] = tumor_logit_on_kidney  # far from the tumor: outside the region
        region = merge_region(target, flag, TUMOR, KIDNEY)
        return float(loss(*merge_classes(x, target, region, TUMOR, KIDNEY))[0])
    assert merged_loss(2.0, 0.0) == pytest.approx(merged_loss(0.0, 0.0), abs=1e-6)  # the split on the tumor
    assert merged_loss(2.0, 4.0) > merged_loss(2.0, 0.0) + 0.05  # healthy kidney called tumor: still an error
    x = torch.zeros(1, 4, 1, 1, 8)
    x[:, TUMOR] = 2.0
    full = [float(loss(x, target)[0])]
    x[0, TUMOR, 0, 0, :2], x[0, KIDNEY, 0, 0, :2] = 0.0, 2.0
    full.append(float(loss(x, target)[0]))
    assert abs(full[0] - full[1]) > 1e-3  # without the merge, the split on the tumor matters


def test_every_deep_supervision_output_is_merged_and_the_boundary_head_left_out_there():
    target = _one_voxel_case()
    logits, deep = torch.randn(1, 4, 1, 1, 8), (torch.randn(1, 4, 1, 1, 8),)
    out, t, region = merge_output(NetworkOutput(logits, deep, torch.ones(1, 1, 1, 1, 8)), target,
                                  torch.tensor([True]), TUMOR, KIDNEY)
    for x, before in ((out.logits, logits), (out.deep_supervision[0], deep[0])):
        assert torch.all(x.softmax(1)[:, TUMOR][region] == 0)
        assert torch.equal(x.permute(1, 0, 2, 3, 4)[:, ~region], before.permute(1, 0, 2, 3, 4)[:, ~region])
    assert torch.equal(out.boundary, torch.ones(1, 1, 1, 1, 8)) and not (t == TUMOR).any()
    assert merge_output(logits, target, torch.tensor([False]), TUMOR, KIDNEY) == (logits, target, None)
    # The boundary head: its loss over the voxels outside the region only.
    head = torch.zeros(1, 1, 1, 1, 8)
    head[0, 0, 0, 0, :3] = 5.0  # confident edges on the faint tumor: the region, not trained
    assert float(boundary_head_loss(head, t, ignore=region)) == pytest.approx(
        float(boundary_head_loss(head[..., 3:], t[..., 3:])), abs=1e-6)


def test_the_recipe_names_the_classes_and_refuses_a_bad_threshold():
    labels = ["background", "kidney", "tumor", "cyst", "aux_liver"]
    assert TrainingRecipe().merged_classes(labels) is None
    assert TrainingRecipe(ambiguous_tumor_separation=0.5).merged_classes(labels) == (2, 1)
    with pytest.raises(ValueError, match="needs tumor and kidney"):
        TrainingRecipe(ambiguous_tumor_separation=0.5).merged_classes(["background", "kidney"])
    for bad in (0, -1.0, True, "0.5"):
        with pytest.raises(ValueError, match="ambiguous_tumor_separation"):
            TrainingRecipe(ambiguous_tumor_separation=bad)


def _cache(tmp_path, crops):
    entries = []
    for i, (image, labels) in enumerate(crops):
        np.savez(tmp_path / f"c{i}_k0.npz", image=image, labels=labels, spacing=np.array([2.0, 2.0, 2.0]),
                 locations_2=np.argwhere(labels == TUMOR)[:50])
        counts = {str(k): int((labels == k).sum()) for k in (1, 2)}
        entries.append({"file": f"c{i}_k0.npz", "case_id": f"c{i}", "class_voxels": counts,
                        "shape": list(labels.shape)})
    (tmp_path / "index.json").write_text(json.dumps({"stage": 2}))
    return entries


def test_the_sampler_flags_patches_of_faint_tumors_and_a_step_trains_them_merged(tmp_path):
    entries = _cache(tmp_path, [_crop(0.5 + 0.05 * 0.2), _crop(0.5 + 0.05 * 4.0, seed=1)])
    sampler = PatchSampler(tmp_path, entries, (16, 16, 16), TUMOR, 1.0, [False, False], merge=(0.5, TUMOR, KIDNEY))
    assert sampler.merge_flags.tolist() == [True, False]
    faint, clear = (sampler.make_patch(PatchPlan(i, TUMOR, 7)) for i in (0, 1))
    assert faint["merge"] is True and clear["merge"] is False and (faint["labels"] == TUMOR).any()
    off = PatchSampler(tmp_path, entries, (16, 16, 16), TUMOR, 1.0, [False, False])
    assert off.merge_flags.tolist() == [False, False]
    batch = next(iter(epoch_loader(sampler, [PatchPlan(0, TUMOR, 7), PatchPlan(1, TUMOR, 7)], 2, 0, False)))
    assert batch["merge"].dtype == torch.bool and batch["merge"].tolist() == [True, False]
    plain = off.make_patch(PatchPlan(0, TUMOR, 7))  # the option changes no patch, only the flag beside it
    assert torch.equal(batch["labels"][0], plain["labels"]) and torch.equal(batch["image"][0], plain["image"])

    class Net(torch.nn.Module):  # one 1x1x1 convolution: a network small enough for a test
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 4, 1)

        def forward(self, x):
            return self.conv(x)
    def total(merged, flag):
        torch.manual_seed(0)
        net = Net()
        batch = {"image": faint["image"][None], "labels": faint["labels"][None], "merge": torch.tensor([flag])}
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        comps = train_step(net, batch, SegmentationLoss(LossConfig(num_classes=4, boundary_weight=1.0)), opt,
                           torch.amp.GradScaler("cpu", enabled=False), torch.device("cpu"), None, None, merged)
        return comps["total"]
    full = total(None, True)
    assert total((TUMOR, KIDNEY), False) == full  # an unflagged patch trains on its full labels
    assert total((TUMOR, KIDNEY), True) != pytest.approx(full, abs=1e-4)  # a flagged one on the merged labels
