"""training/ambiguity.py: the tumor's separation from its kidney, the marginal loss, and their wiring (decision 86)."""
import json

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.networks.blocks import NetworkOutput
from training.ambiguity import SUPPRESSED, merge_classes, merge_output, tumor_separation
from training.losses import LossConfig, SegmentationLoss
from training.optim import train_step
from training.recipe import TrainingRecipe
from training.sampling import PatchPlan, PatchSampler

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


def test_merged_samples_give_dst_the_sum_of_both_probabilities_and_keep_the_others():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 3, 3, 3), torch.randint(0, 4, (2, 3, 3, 3))
    out, t = merge_classes(logits, target, torch.tensor([True, False]), TUMOR, KIDNEY)
    p, q = logits.softmax(1), out.softmax(1)
    assert torch.allclose(q[0, KIDNEY], p[0, KIDNEY] + p[0, TUMOR], atol=1e-6)
    assert torch.all(q[0, TUMOR] == 0) and torch.allclose(q[0, [0, 3]], p[0, [0, 3]], atol=1e-6)
    assert torch.equal(out[1], logits[1]) and torch.equal(t[1], target[1])  # the unflagged sample is untouched
    assert not (t[0] == TUMOR).any() and torch.equal(t[0] == KIDNEY, (target[0] == KIDNEY) | (target[0] == TUMOR))
    assert float(out[0, TUMOR].max()) == SUPPRESSED
    same, t_same = merge_classes(logits, target, torch.tensor([False, False]), TUMOR, KIDNEY)
    assert same is logits and t_same is target
    with pytest.raises(ValueError, match="two of the 4 classes"):
        merge_classes(logits, target, torch.tensor([True, True]), TUMOR, TUMOR)
    with pytest.raises(ValueError, match="3 flags for a batch of 2"):
        merge_classes(logits, target, torch.tensor([True, True, False]), TUMOR, KIDNEY)


def test_the_marginal_loss_does_not_care_how_kidney_or_tumor_is_split():
    """A flagged sample's loss depends on p(kidney) + p(tumor) only; an unflagged one's on each of them."""
    loss = SegmentationLoss(LossConfig(num_classes=4, boundary_weight=1.0))
    target = torch.full((1, 4, 4, 4), KIDNEY)
    target[0, :2] = TUMOR
    a = torch.zeros(1, 4, 4, 4, 4)
    a[:, KIDNEY], a[:, TUMOR] = 2.0, 0.0
    b = a.clone()
    b[:, KIDNEY], b[:, TUMOR] = 0.0, 2.0  # the same kidney-or-tumor mass, split the other way
    flag = torch.tensor([True])
    merged = [loss(*merge_classes(x, target, flag, TUMOR, KIDNEY))[0] for x in (a, b)]
    plain = [loss(x, target)[0] for x in (a, b)]
    assert float(merged[0]) == pytest.approx(float(merged[1]), abs=1e-6)
    assert abs(float(plain[0]) - float(plain[1])) > 1e-3


def test_every_deep_supervision_output_is_merged_and_the_boundary_head_kept():
    logits, deep = torch.randn(1, 4, 2, 2, 2), (torch.randn(1, 4, 2, 2, 2),)
    out, t = merge_output(NetworkOutput(logits, deep, torch.ones(1, 1, 2, 2, 2)), torch.full((1, 2, 2, 2), TUMOR),
                          torch.tensor([True]), TUMOR, KIDNEY)
    assert torch.all(out.logits.softmax(1)[:, TUMOR] == 0) and torch.all(out.deep_supervision[0].softmax(1)[:, TUMOR] == 0)
    assert torch.equal(out.boundary, torch.ones(1, 1, 2, 2, 2)) and torch.all(t == KIDNEY)


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
        entries.append({"file": f"c{i}_k0.npz", "case_id": f"c{i}", "class_voxels": counts, "shape": list(labels.shape)})
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

    class Net(torch.nn.Module):  # one 1x1x1 convolution: its tumor weights move only through the tumor labels
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
