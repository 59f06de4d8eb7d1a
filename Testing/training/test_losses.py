"""Training losses against hand-computed values on tiny tensors, plus structural properties."""
import math

import pytest
import torch

from KidneyTumorSegLib.networks.blocks import NetworkOutput
from training.losses import (DEFAULT_CLASS_WEIGHTS, LossConfig, SegmentationLoss, boundary_head_loss,
                             boundary_map, boundary_voxel_weights, deep_supervision_weights, focal_loss,
                             soft_dice_loss, weighted_cross_entropy)

L3 = math.log(3.0)
A = math.log(4 / 3)  # -log(0.75) = 0.2876821
B = math.log(4.0)    # -log(0.25) = 1.3862944


def two_class_case():
    """2 classes on 2x2x2 voxels (flattened order z, y, x).

    logits (0, +-ln 3) give p1 = 0.75 or 0.25 exactly:
        p1     = [.75, .75, .25, .25, .25, .25, .25, .75]
        target = [1,   1,   0,   0,   0,   0,   1,   1  ]
    per-voxel CE: class-0 voxels all have p0 = .75 -> 4 x A; class-1 voxels: 3 x A (p1 = .75) + 1 x B.
    """
    p1_high = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool)
    z1 = torch.where(p1_high, torch.tensor(L3), torch.tensor(-L3))
    logits = torch.stack([torch.zeros(8), z1]).reshape(1, 2, 2, 2, 2)
    target = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1]).reshape(1, 2, 2, 2)
    return logits, target


def test_cross_entropy_hand_values():
    logits, target = two_class_case()
    # unweighted: (7 A + B) / 8 = (7 * 0.2876821 + 1.3862944) / 8 = 0.4250086
    assert weighted_cross_entropy(logits, target, None).item() == pytest.approx((7 * A + B) / 8, abs=1e-6)
    assert weighted_cross_entropy(logits, target, None).item() == pytest.approx(0.4250086, abs=1e-6)
    # weights (0.2, 0.8): (0.2 * 4A + 0.8 * (3A + B)) / (0.2 * 4 + 0.8 * 4) = 2.0296182 / 4 = 0.5074045
    got = weighted_cross_entropy(logits, target, (0.2, 0.8)).item()
    assert got == pytest.approx((0.2 * 4 * A + 0.8 * (3 * A + B)) / 4.0, abs=1e-6)
    assert got == pytest.approx(0.5074045, abs=1e-6)
    # the same as PyTorch's weighted mean
    ref = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([0.2, 0.8]))
    assert got == pytest.approx(ref.item(), abs=1e-6)


def test_cross_entropy_weights_change_as_expected():
    logits, target = two_class_case()
    base = weighted_cross_entropy(logits, target, (1.0, 1.0)).item()
    # scaling all weights leaves a weighted mean unchanged
    assert weighted_cross_entropy(logits, target, (3.0, 3.0)).item() == pytest.approx(base, abs=1e-6)
    # weighting the class with the larger error (class 1: mean (3A + B) / 4) raises the loss, and vice versa
    assert weighted_cross_entropy(logits, target, (0.2, 0.8)).item() > base
    assert weighted_cross_entropy(logits, target, (0.8, 0.2)).item() < base
    # only class 1 counts: its mean CE (3A + B) / 4 = 0.5623352
    assert weighted_cross_entropy(logits, target, (0.0, 1.0)).item() == pytest.approx((3 * A + B) / 4, abs=1e-6)
    with pytest.raises(ValueError, match="classes"):
        weighted_cross_entropy(logits, target, DEFAULT_CLASS_WEIGHTS)  # 4 weights for 2 classes


def test_soft_dice_hand_values():
    logits, target = two_class_case()
    # class 1: I = .75 + .75 + .25 + .75 = 2.5, sum p1 = 3 x .75 + 5 x .25 = 3.5, |g1| = 4 -> 5 / 7.5 = 2/3
    got = soft_dice_loss(logits, target, include_background=False, smooth=0.0).item()
    assert got == pytest.approx(1 - 2 / 3, abs=1e-6)
    # class 0: I = 4 x .75 = 3, sum p0 = 4.5, |g0| = 4 -> 6 / 8.5 = 12/17; mean with 2/3
    got = soft_dice_loss(logits, target, include_background=True, smooth=0.0).item()
    assert got == pytest.approx(1 - (2 / 3 + 12 / 17) / 2, abs=1e-6)
    # smooth 1 in numerator and denominator: (5 + 1) / (7.5 + 1)
    assert soft_dice_loss(logits, target, smooth=1.0).item() == pytest.approx(1 - 6 / 8.5, abs=1e-6)
    # weighted classes (0.25, 0.75): 1 - (0.25 * 12/17 + 0.75 * 2/3)
    got = soft_dice_loss(logits, target, include_background=True, smooth=0.0, class_weights=(0.25, 0.75)).item()
    assert got == pytest.approx(1 - (0.25 * 12 / 17 + 0.75 * 2 / 3), abs=1e-6)


def test_soft_dice_batch_vs_per_sample():
    logits, target = two_class_case()
    # sample 2: perfectly predicted class 1 everywhere (Dice 1, as probabilities are ~1)
    logits2 = torch.cat([logits, torch.stack([torch.zeros(2, 2, 2), torch.full((2, 2, 2), 30.0)])[None]])
    target2 = torch.cat([target, torch.ones(1, 2, 2, 2, dtype=torch.long)])
    per_sample = soft_dice_loss(logits2, target2, batch_dice=False, smooth=0.0).item()
    assert per_sample == pytest.approx(1 - (2 / 3 + 1.0) / 2, abs=1e-6)
    # batch: I = 2.5 + 8, sum p = 3.5 + 8, |g| = 4 + 8 -> 21 / 23.5
    batch = soft_dice_loss(logits2, target2, batch_dice=True, smooth=0.0).item()
    assert batch == pytest.approx(1 - 21 / 23.5, abs=1e-6)


def test_perfect_prediction_dice_loss_is_zero():
    target = torch.randint(0, 4, (2, 5, 6, 7))
    logits = 40.0 * torch.nn.functional.one_hot(target, 4).permute(0, 4, 1, 2, 3).float()
    for bd in (True, False):
        for bg in (True, False):
            assert soft_dice_loss(logits, target, batch_dice=bd, include_background=bg).item() < 1e-6


def test_focal_loss_hand_values():
    logits, target = two_class_case()
    # p_t = .75 on 7 voxels: .25^2 * A; p_t = .25 on one voxel: .75^2 * B; mean over 8
    expected = (7 * 0.0625 * A + 0.5625 * B) / 8
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, abs=1e-6)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx((7 * A + B) / 8, abs=1e-6)
    # alpha (0.25, 1): class-0 voxels (4 x p_t .75) are scaled by 0.25
    expected = (0.25 * 4 * 0.0625 * A + 3 * 0.0625 * A + 0.5625 * B) / 8
    assert focal_loss(logits, target, 2.0, alpha=(0.25, 1.0)).item() == pytest.approx(expected, abs=1e-6)


def test_boundary_map_line():
    # labels along x: 0 0 0 1 1 1 -> contour at indices 2 and 3 (both sides); the volume ends are not contour
    target = torch.tensor([0, 0, 0, 1, 1, 1]).reshape(1, 1, 1, 6)
    assert boundary_map(target)[0, 0, 0].tolist() == [False, False, True, True, False, False]
    # three labels: 0 1 2 -> the middle voxel differs from both neighbours
    assert boundary_map(torch.tensor([[[[0, 1, 1, 2]]]]))[0, 0, 0].tolist() == [True, True, True, True]


def test_boundary_map_of_cube_is_both_surface_layers():
    target = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6, 2:6] = 1
    b = boundary_map(target)[0]
    cube = target[0].bool()
    inner = cube.clone()
    inner[3:5, 3:5, 3:5] = False          # the cube's own surface layer: 4^3 - 2^3 = 56 voxels
    outer = torch.zeros_like(cube)        # background voxels sharing a face with the cube: 6 faces x 16 = 96
    outer[1, 2:6, 2:6] = outer[6, 2:6, 2:6] = True
    outer[2:6, 1, 2:6] = outer[2:6, 6, 2:6] = True
    outer[2:6, 2:6, 1] = outer[2:6, 2:6, 6] = True
    assert torch.equal(b, inner | outer)
    assert int(b.sum()) == 56 + 96
    # no edge or corner neighbours (6-connectivity): (1, 1, 2) touches the cube only along an edge
    assert not b[1, 1, 2]


def test_boundary_weighted_ce_hand_values():
    # 6 voxels along x, labels 0 0 0 1 1 1, p1 = .25 .25 .75 .75 .25 .75 -> per-voxel CE A A B A B A
    target = torch.tensor([0, 0, 0, 1, 1, 1]).reshape(1, 1, 1, 6)
    z1 = torch.tensor([-L3, -L3, L3, L3, -L3, L3])
    logits = torch.stack([torch.zeros(6), z1]).reshape(1, 2, 1, 1, 6)
    # contour voxels 2 and 3 (CE B and A) get weight 2.5: (A + A + 2.5B + 2.5A + B + A) / (4 + 2 x 2.5)
    expected = (5.5 * A + 3.5 * B) / 9.0
    got = weighted_cross_entropy(logits, target, None, boundary_voxel_weights(target, 2.5)).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # with class weights (0.2, 0.8) the two weights multiply
    w = [0.2, 0.2, 0.5, 2.0, 0.8, 0.8]
    ce = [A, A, B, A, B, A]
    expected = sum(wi * ci for wi, ci in zip(w, ce)) / sum(w)
    got = weighted_cross_entropy(logits, target, (0.2, 0.8), boundary_voxel_weights(target, 2.5)).item()
    assert got == pytest.approx(expected, abs=1e-6)
    assert boundary_voxel_weights(target)[0, 0, 0].tolist() == [1.0, 1.0, 2.5, 2.5, 1.0, 1.0]


def test_boundary_head_loss_hand_values():
    target = torch.tensor([0, 0, 0, 1, 1, 1]).reshape(1, 1, 1, 6)
    # logits 0 everywhere -> BCE log 2 per voxel; logit ln 3 (p .75) on the two contour voxels -> A each
    z = torch.tensor([0.0, 0.0, L3, L3, 0.0, 0.0]).reshape(1, 1, 1, 1, 6)
    assert boundary_head_loss(z, target).item() == pytest.approx((4 * math.log(2) + 2 * A) / 6, abs=1e-6)
    # pos_weight scales the positive (contour) terms
    assert boundary_head_loss(z, target, pos_weight=3.0).item() == pytest.approx(
        (4 * math.log(2) + 6 * A) / 6, abs=1e-6)


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == (1.0,)
    w = deep_supervision_weights(3)
    assert w == pytest.approx((4 / 7, 2 / 7, 1 / 7))
    for n in range(1, 7):
        w = deep_supervision_weights(n)
        assert sum(w) == pytest.approx(1.0)
        assert all(a == pytest.approx(2 * b) for a, b in zip(w, w[1:]))
    with pytest.raises(ValueError):
        deep_supervision_weights(0)


def test_loss_config_round_trip_and_validation():
    cfg = LossConfig(focal_weight=0.5, focal_alpha=(0.25, 1.0, 1.0, 1.0))
    d = cfg.to_dict()
    assert d["class_weights"] == [0.2, 0.8, 1.5, 1.5]
    assert LossConfig.from_dict(d) == cfg
    assert LossConfig().class_weights == (0.2, 0.8, 1.5, 1.5)
    assert (LossConfig().dice_weight, LossConfig().ce_weight, LossConfig().boundary_weight) == (0.6, 0.4, 2.5)
    with pytest.raises(ValueError, match="Unknown"):
        LossConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="class_weights"):
        LossConfig(class_weights=(1.0, 1.0))
    with pytest.raises(ValueError):
        LossConfig(dice_weight=0.0, ce_weight=0.0)
    with pytest.raises(ValueError):
        LossConfig(boundary_weight=0.0)


def test_segmentation_loss_plain_tensor_matches_parts():
    logits, target = two_class_case()
    cfg = LossConfig(num_classes=2, class_weights=(0.2, 0.8), boundary_weight=1.0, dice_smooth=0.0)
    total, parts = SegmentationLoss(cfg)(logits, target)
    assert total.item() == pytest.approx(0.6 * (1 / 3) + 0.4 * 0.5074045, abs=1e-6)
    assert parts["boundary_head"].item() == 0.0 and parts["focal"].item() == 0.0
    assert parts["total"].item() == pytest.approx(total.item())
    with pytest.raises(ValueError, match="labels"):
        SegmentationLoss(cfg)(logits, target + 1)
    with pytest.raises(TypeError):
        SegmentationLoss(cfg)([logits], target)


def test_segmentation_loss_network_output_and_gradients():
    torch.manual_seed(0)
    target = torch.zeros(2, 6, 8, 8, dtype=torch.long)
    target[:, 1:5, 2:6, 2:6] = 1
    target[:, 2:4, 3:5, 3:5] = 2
    target[1, 1, 2, 2] = 3
    main = torch.randn(2, 4, 6, 8, 8, requires_grad=True)
    ds = (torch.randn(2, 4, 6, 8, 8, requires_grad=True), torch.randn(2, 4, 6, 8, 8, requires_grad=True))
    boundary = torch.randn(2, 1, 6, 8, 8, requires_grad=True)
    cfg = LossConfig(focal_weight=0.3)
    loss = SegmentationLoss(cfg)
    total, parts = loss(NetworkOutput(main, ds, boundary), target)
    # total is the weighted sum of the components; components are ds-weighted over the 3 outputs
    recombined = 0.6 * parts["dice"] + 0.4 * parts["ce"] + 0.3 * parts["focal"] + 1.0 * parts["boundary_head"]
    assert total.item() == pytest.approx(recombined.item(), rel=1e-6)
    w = deep_supervision_weights(3)
    single = [SegmentationLoss(LossConfig(focal_weight=0.3))(x, target)[1] for x in (main, *ds)]
    assert parts["ce"].item() == pytest.approx(sum(wi * s["ce"].item() for wi, s in zip(w, single)), rel=1e-6)
    assert parts["boundary_head"].item() == pytest.approx(boundary_head_loss(boundary, target).item(), rel=1e-6)
    total.backward()
    for t in (main, *ds, boundary):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # identical deep-supervision outputs give the same loss as the main output alone (weights sum to 1)
    cfg2 = LossConfig()
    a, _ = SegmentationLoss(cfg2)(NetworkOutput(main, (main, main), None), target)
    b, _ = SegmentationLoss(cfg2)(main, target)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # deep_supervision=False ignores the auxiliary outputs
    c, _ = SegmentationLoss(LossConfig(deep_supervision=False))(NetworkOutput(main, ds, None), target)
    assert c.item() == pytest.approx(b.item(), rel=1e-6)


def test_segmentation_loss_with_real_network():
    """The loss accepts the training output of the project's V-Net (deep supervision + boundary head)."""
    from KidneyTumorSegLib.networks import TINY, build_network
    torch.manual_seed(0)
    net = build_network("improved_vnet", TINY).train()
    x = torch.randn(1, 1, 16, 16, 16)
    target = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    target[0, 4:12, 4:12, 4:12] = 1
    target[0, 6:9, 6:9, 6:9] = 2
    out = net(x)
    assert isinstance(out, NetworkOutput) and out.boundary is not None and len(out.deep_supervision) > 0
    total, parts = SegmentationLoss()(out, target)
    assert torch.isfinite(total) and parts["boundary_head"].item() > 0
    total.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
