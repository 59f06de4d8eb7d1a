"""Networks: shapes for odd sizes, train/eval contract, gradients, attention/fusion blocks, registry."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from KidneyTumorSegLib.networks import (NETWORKS, PAPER, PRESETS, STAGE1_DEFAULT, STAGE1_TINY, TINY,
                                        ImprovedVNet, NetworkOutput, ResidualUNet, UNetConfig,
                                        VNetConfig, build_network, config_from_dict, config_to_dict,
                                        count_parameters)
from KidneyTumorSegLib.networks.blocks import (DilatedBottleneck, MDFBlock, MultiScaleFusion,
                                               SEBlock, SpatialAttention)

ODD = (17, 19, 21)  # not multiples of 16 along any axis

VNET_VARIANTS = {
    "default": TINY,
    "mdf": dataclasses.replace(TINY, block="mdf"),
    "dilated": dataclasses.replace(TINY, dilated_bottleneck=True),
    "plain": dataclasses.replace(TINY, fusion=False, short_connection=False, attention=False,
                                 boundary_head=False, deep_supervision=False),
    "group_leaky_zero_pad": dataclasses.replace(TINY, norm="group", activation="leakyrelu", pad_mode="constant"),
    "fusion_from_1": dataclasses.replace(TINY, fusion_from_level=1),
}


def _model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return ImprovedVNet(cfg) if isinstance(cfg, VNetConfig) else ResidualUNet(cfg)


@pytest.mark.parametrize("size", [ODD, (16, 16, 16), (9, 33, 20)])
@pytest.mark.parametrize("variant", sorted(VNET_VARIANTS))
def test_vnet_eval_shape_for_any_size(variant, size):
    cfg = dataclasses.replace(VNET_VARIANTS[variant], in_channels=2)
    net = _model(cfg).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 4, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", sorted(VNET_VARIANTS))
def test_vnet_training_output_structure(variant):
    cfg = VNET_VARIANTS[variant]
    net = _model(cfg).train()
    out = net(torch.randn(2, 1, *ODD))
    assert isinstance(out, NetworkOutput) and isinstance(out, tuple)
    assert out[0] is out.logits and out.logits.shape == (2, 4, *ODD)
    n_ds = cfg.depth - 1 if cfg.deep_supervision else 0
    assert len(out.deep_supervision) == n_ds
    for t in out.deep_supervision:
        assert t.shape == (2, 4, *ODD)
    if cfg.boundary_head:
        assert out.boundary.shape == (2, 1, *ODD)
    else:
        assert out.boundary is None


@pytest.mark.parametrize("cfg", [STAGE1_TINY, dataclasses.replace(STAGE1_TINY, dilated_bottleneck=True),
                                 dataclasses.replace(STAGE1_TINY, deep_supervision=False, depth=3)])
def test_unet_shapes_and_contract(cfg):
    net = _model(cfg)
    x = torch.randn(1, 1, 23, 18, 35)
    net.train()
    out = net(x)
    assert out.logits.shape == (1, 2, 23, 18, 35)
    assert len(out.deep_supervision) == (cfg.depth - 1 if cfg.deep_supervision else 0)
    assert all(t.shape == (1, 2, 23, 18, 35) for t in out.deep_supervision)
    assert out.boundary is None
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 23, 18, 35)


def _check_all_grads(net, out, allow_zero_fraction: float = 0.02):
    loss = out.logits.square().mean()
    loss = loss + sum(t.square().mean() for t in out.deep_supervision)
    if out.boundary is not None:
        loss = loss + out.boundary.square().mean()
    loss.backward()
    zero = []
    for name, p in net.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
        if p.grad.abs().max() == 0:
            zero.append(name)
    n = sum(1 for _ in net.parameters())
    assert len(zero) <= allow_zero_fraction * n, f"zero gradients: {zero}"


@pytest.mark.parametrize("variant", ["default", "mdf", "dilated"])
def test_vnet_gradients_reach_every_parameter(variant):
    net = _model(VNET_VARIANTS[variant]).train()
    _check_all_grads(net, net(torch.randn(2, 1, 17, 18, 19)))


def test_vnet_gradients_with_suppression_enabled():
    # Fresh SE weights sit near 0.5, so the 0.05 threshold suppresses nothing yet.
    cfg = dataclasses.replace(TINY, se_suppress_below=0.05, block="mdf")
    net = _model(cfg).train()
    _check_all_grads(net, net(torch.randn(2, 1, 16, 17, 18)))


def test_unet_gradients_reach_every_parameter():
    net = _model(dataclasses.replace(STAGE1_TINY, dilated_bottleneck=True)).train()
    _check_all_grads(net, net(torch.randn(2, 1, 17, 18, 19)))


@pytest.mark.parametrize("cfg", [VNET_VARIANTS["mdf"], STAGE1_TINY])
def test_eval_determinism_and_seeded_init(cfg):
    x = torch.randn(1, 1, *ODD)
    a, b = _model(cfg, seed=3).eval(), _model(cfg, seed=3).eval()
    with torch.no_grad():
        y1, y2, y3 = a(x), a(x), b(x)
    assert torch.equal(y1, y2)
    assert torch.equal(y1, y3)
    c = _model(cfg, seed=4).eval()
    with torch.no_grad():
        assert not torch.allclose(c(x), y1)


def test_input_channel_mismatch_is_rejected():
    with pytest.raises(ValueError, match="expected input"):
        _model(TINY).eval()(torch.randn(1, 2, 16, 16, 16))


# --- blocks -----------------------------------------------------------------------------------------

def test_se_squeeze_pools_over_all_three_axes():
    torch.manual_seed(0)
    se = SEBlock(16)
    x = torch.randn(2, 16, 5, 6, 7)
    assert torch.allclose(SEBlock.squeeze(x), x.mean(dim=(2, 3, 4)))
    # A feature varying only along Z: pooling over (Y, X) alone would not give its global mean.
    z_only = torch.zeros(1, 16, 4, 3, 3)
    z_only[:, :, 0] = 4.0
    assert torch.allclose(SEBlock.squeeze(z_only), torch.ones(1, 16))
    # Moving mass along Z does not change the weights; changing the Z mean does.
    z_moved = torch.zeros_like(z_only)
    z_moved[:, :, 3] = 4.0
    assert torch.allclose(se.weights(z_only), se.weights(z_moved))
    assert not torch.allclose(se.weights(z_only), se.weights(z_only * 0.5))


def test_se_weights_in_unit_interval_and_suppression():
    torch.manual_seed(0)
    se = SEBlock(32, reduction=16)
    with torch.no_grad():  # spread the logits so that some weights fall below 0.05
        se.fc2.bias.copy_(torch.linspace(-8, 8, 32))
    x = torch.randn(3, 32, 4, 5, 6)
    w = se.weights(x)
    assert w.shape == (3, 32) and (w >= 0).all() and (w <= 1).all()
    assert (w < 0.05).any() and (w > 0.05).any()
    se.suppress_below = 0.05
    ws = se.weights(x)
    assert torch.equal(ws[w < 0.05], torch.zeros_like(ws[w < 0.05]))
    assert torch.equal(ws[w >= 0.05], w[w >= 0.05])
    y = se(x)
    assert torch.equal(y, x * ws[:, :, None, None, None])


def test_spatial_attention_map_from_channel_mean_and_max():
    torch.manual_seed(0)
    sa = SpatialAttention(kernel_size=1)
    x = torch.randn(2, 6, 4, 5, 7)
    m = sa.attention_map(x)
    assert m.shape == (2, 1, 4, 5, 7) and (m >= 0).all() and (m <= 1).all()
    w, b = sa.conv.weight.view(2), sa.conv.bias
    expected = torch.sigmoid(w[0] * x.mean(1, keepdim=True) + w[1] * x.amax(1, keepdim=True) + b)
    assert torch.allclose(m, expected, atol=1e-6)
    assert torch.allclose(sa(x), x * m)


def test_mdf_anisotropic_branch_does_not_mix_slices():
    torch.manual_seed(0)
    # Batch norm in eval mode is a per-voxel affine map, so the branch is purely in-plane.
    blk = MDFBlock(3, 8, n_convs=2, norm="batch").eval()
    x = torch.randn(1, 3, 7, 9, 10)
    x2 = x.clone()
    x2[:, :, 3] += torch.randn(1, 3, 9, 10)
    with torch.no_grad():
        diff = (blk.aniso(x2) - blk.aniso(x)).abs().amax(dim=(0, 1, 3, 4))
        diff_iso = (blk.iso(x2) - blk.iso(x)).abs().amax(dim=(0, 1, 3, 4))
    assert diff[3] > 0
    assert torch.all(diff[torch.arange(7) != 3] == 0)
    assert (diff_iso[[2, 4]] > 0).all()  # the isotropic branch does see neighbouring slices
    assert blk.aniso[0][0].kernel_size == (1, 3, 3)
    with torch.no_grad():
        assert blk(x).shape == (1, 8, 7, 9, 10)


def test_dilated_bottleneck_keeps_size():
    torch.manual_seed(0)
    blk = DilatedBottleneck(8, rates=(2, 3, 5))
    assert [m[0].dilation for m in blk.convs] == [(2, 2, 2), (3, 3, 3), (5, 5, 5)]
    x = torch.randn(1, 8, 3, 5, 6)
    assert blk(x).shape == x.shape


def test_fusion_weights_sum_to_one_and_favour_identical_scale():
    torch.manual_seed(0)
    fusion = MultiScaleFusion([4, 8, 16, 32], decoder_channels=8, out_ch=4)
    query = torch.randn(2, 4, 6, 6, 6)
    scales = [torch.randn(2, 4, 6, 6, 6), torch.randn(2, 4, 6, 6, 6), query.clone(), torch.randn(2, 4, 6, 6, 6)]
    w = fusion.similarity_weights(scales, query)
    assert w.shape == (2, 4)
    assert torch.allclose(w.sum(1), torch.ones(2))
    assert (w.argmax(1) == 2).all()
    # Anti-correlated carries the same (Gaussian) information as correlated.
    w_neg = fusion.similarity_weights([scales[0], -query], query)
    assert (w_neg[:, 1] > w_neg[:, 0]).all()
    # Full module: encoder scales at 4 resolutions resized to the decoder size.
    feats = [torch.randn(2, c, 16 // 2 ** i, 16 // 2 ** i, 16 // 2 ** i) for i, c in enumerate([4, 8, 16, 32])]
    fused, w = fusion(feats, torch.randn(2, 8, 8, 8, 8), return_weights=True)
    assert fused.shape == (2, 4, 8, 8, 8)
    assert torch.allclose(w.sum(1), torch.ones(2))


# --- presets, registry and configs ------------------------------------------------------------------

def test_paper_config_parameter_count():
    n = count_parameters(ImprovedVNet(PAPER))
    print(f"ImprovedVNet(PAPER) parameters: {n:,}")
    assert n == 14_785_597
    assert abs(n - 14.8e6) / 14.8e6 < 0.10


def test_small_presets_are_small():
    counts = {(net, k): count_parameters(build_network(net, c))
              for net, presets in PRESETS.items() for k, c in presets.items() if k != "paper"}
    print(counts)
    assert counts[("improved_vnet", "tiny")] == 306_437
    assert counts[("improved_vnet", "small")] == 1_221_129
    assert counts[("residual_unet", "default")] == 1_795_888
    assert counts[("residual_unet", "tiny")] == 165_788
    assert STAGE1_DEFAULT.num_classes == 2 and PAPER.num_classes == 4


@pytest.mark.parametrize("name,cfg", [("improved_vnet", PAPER), ("improved_vnet", VNET_VARIANTS["mdf"]),
                                      ("improved_vnet", dataclasses.replace(TINY, se_suppress_below=0.05)),
                                      ("residual_unet", STAGE1_DEFAULT)])
def test_config_dict_round_trip_is_exact(name, cfg):
    d = config_to_dict(cfg)
    text = json.dumps(d)  # JSON-safe
    assert "(" not in text
    d2 = json.loads(text)
    cfg2 = config_from_dict(name, d2)
    assert cfg2 == cfg and type(cfg2) is type(cfg)
    assert config_to_dict(cfg2) == d
    assert isinstance(cfg2.dilation_rates, tuple)
    net = build_network(name, d2)
    assert type(net) is NETWORKS[name][1]
    assert count_parameters(net) == count_parameters(build_network(name, cfg))


def test_registry_errors():
    with pytest.raises(ValueError, match="bogus_key"):
        config_from_dict("improved_vnet", {**config_to_dict(TINY), "bogus_key": 1})
    with pytest.raises(ValueError, match="no_such_net"):
        config_from_dict("no_such_net", {})
    with pytest.raises(ValueError, match="no_such_net"):
        build_network("no_such_net", TINY)
    with pytest.raises(TypeError):
        build_network("residual_unet", TINY)  # wrong config class
    assert set(NETWORKS) == {"improved_vnet", "residual_unet"}
    assert NETWORKS["improved_vnet"] == (VNetConfig, ImprovedVNet)
    assert NETWORKS["residual_unet"] == (UNetConfig, ResidualUNet)


def test_configs_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PAPER.base_channels = 8  # type: ignore[misc]
    bad = [dict(block="dense"), dict(norm="layer"), dict(encoder_convs=(1, 1)), dict(depth=0),
           dict(se_suppress_below=1.5), dict(fusion="yes"), dict(fusion_from_level=4), dict(base_channels=True),
           dict(spatial_kernel=2)]
    for kw in bad:
        with pytest.raises(ValueError):
            VNetConfig(**kw)
    with pytest.raises(ValueError, match="num_classes"):
        UNetConfig(num_classes=0)
    assert VNetConfig(encoder_convs=[2, 2, 2, 2]) == VNetConfig()  # lists become tuples
    assert math.isclose(config_to_dict(dataclasses.replace(TINY, se_suppress_below=0.05))["se_suppress_below"], 0.05)


def test_fusion_from_level_skips_full_resolution_fusion():
    full, coarse = _model(TINY), _model(dataclasses.replace(TINY, fusion_from_level=1))
    assert isinstance(coarse.fusion[0], torch.nn.Identity) and isinstance(coarse.fusion[1], MultiScaleFusion)
    assert count_parameters(coarse) < count_parameters(full)
