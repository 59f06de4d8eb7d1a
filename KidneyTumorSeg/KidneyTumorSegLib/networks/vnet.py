"""Improved V-Net, the stage-2 network (kidney / tumor / cyst).

Layout (depth 4, c_l = base_channels * 2**l, tensors (N, C, Z, Y, X)):

- stem 3x3x3 conv (in_channels -> c_0);
- encoder level l = 0..depth-1: residual V-Net stage (or MDF block) -> SE channel
  attention -> spatial attention -> skip_l; then 2x2x2 stride-2 conv down
  (c_l -> c_{l+1});
- bottleneck at 1/2**depth: residual stage, or HDC dilated convs (rates 2, 3, 5);
- decoder level l = depth-1..0: transposed conv up (c_{l+1} -> c_l), concat with
  skip_l, [short connection: 1x1x1 conv of skip_l to c_l/2], [multi-scale
  fusion of all encoder scales, c_l/2 channels], then a residual stage whose
  residual is the up-sampled tensor (as in V-Net);
- 1x1x1 heads: main logits, optional deep supervision on decoder levels below
  full resolution, optional 1-channel boundary logits.

Any input size works: the input is padded at the high end to a multiple of
2**depth and every output is cropped back to the input size.

Multi-scale fusion ("mutual information coefficient", no formula in the paper):
true MI needs density estimation (non-differentiable histograms, costly in 3D),
so each scale is weighted by softmax_s(t * MI_s) with the Gaussian-case
MI_s = -0.5 log(1 - rho_s^2), rho_s the per-sample Pearson correlation between
the scale and a 1x1x1 projection of the decoder feature, t a learnable
temperature (see :class:`~.blocks.MultiScaleFusion`). The fused tensor is
concatenated to the decoder input.

SE suppression (``se_suppress_below=0.05`` in the paper) zeroes channel weights
below the threshold: a hard mask, non-differentiable at the threshold, off by default.

Training-mode output (:class:`~.blocks.NetworkOutput`): ``logits``;
``deep_supervision`` = logits of decoder levels 1..depth-1 (1/2, 1/4, 1/8 for
depth 4), each up-sampled trilinearly to the input size; ``boundary`` = (N, 1,
Z, Y, X) logits or None. Eval mode returns the logits tensor only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from .blocks import (ChannelSpatialAttention, ConvNormAct, DilatedBottleneck, Down, EncoderDecoder, MDFBlock,
                     MultiScaleFusion, ResidualStage, Up)
from .config_checks import check_bool, check_choice, check_common, check_int, check_int_tuple

BLOCKS = ("residual", "mdf")


@dataclass(frozen=True)
class VNetConfig:
    """Configuration of :class:`ImprovedVNet` (frozen; lists are turned into tuples).

    ``encoder_convs`` / ``decoder_convs`` give the number of convs per stage for
    levels 0..depth-1 (full resolution first); ``bottleneck_convs`` for the
    bottleneck (ignored when ``dilated_bottleneck``, which uses ``dilation_rates``).
    """

    in_channels: int = 1
    num_classes: int = 4  # background, kidney, tumor, cyst
    base_channels: int = 16
    depth: int = 4
    encoder_convs: Tuple[int, ...] = (2, 2, 2, 2)
    bottleneck_convs: int = 2
    decoder_convs: Tuple[int, ...] = (2, 2, 2, 2)
    norm: str = "instance"
    activation: str = "prelu"
    block: str = "residual"  # "residual" (V-Net stage) or "mdf" (MDF block of Masses-Net)
    dilated_bottleneck: bool = False
    dilation_rates: Tuple[int, ...] = (2, 3, 5)
    attention: bool = True  # SE + spatial attention after each encoder stage
    se_reduction: int = 16
    se_suppress_below: Optional[float] = None  # paper: 0.05; hard threshold, off by default
    spatial_kernel: int = 1
    fusion: bool = True
    fusion_from_level: int = 0  # fuse at decoder levels >= this; 1 skips the costly full-resolution fusion
    short_connection: bool = True
    boundary_head: bool = True
    deep_supervision: bool = True
    pad_mode: str = "replicate"

    def __post_init__(self) -> None:
        check_common(self, min_base_channels=2)  # 2: the short connection has base_channels // 2 channels
        check_int_tuple("encoder_convs", self.encoder_convs, self.depth, 1)
        check_int_tuple("decoder_convs", self.decoder_convs, self.depth, 1)
        check_int("bottleneck_convs", self.bottleneck_convs, 1)
        check_choice("block", self.block, BLOCKS)
        for name in ("attention", "fusion", "short_connection", "boundary_head"):
            check_bool(name, getattr(self, name))
        check_int("se_reduction", self.se_reduction, 1)
        check_int("fusion_from_level", self.fusion_from_level, 0)
        if self.fusion_from_level >= self.depth:
            raise ValueError(f"fusion_from_level must be below depth ({self.depth}), got {self.fusion_from_level}")
        check_int("spatial_kernel", self.spatial_kernel, 1)
        if self.spatial_kernel % 2 == 0:
            raise ValueError(f"spatial_kernel must be odd to keep the size, got {self.spatial_kernel}")
        s = self.se_suppress_below
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0):
            raise ValueError(f"se_suppress_below must be None or a float in [0, 1), got {s!r}")


class ImprovedVNet(EncoderDecoder):
    """Improved V-Net (SE + spatial attention, multi-scale fusion, short connections, boundary head).

    ``forward(x)`` with x (N, in_channels, Z, Y, X) of any size returns, in eval
    mode, the logits (N, num_classes, Z, Y, X); in training mode a
    :class:`NetworkOutput` (logits, deep_supervision tuple, boundary or None).
    """

    def __init__(self, config: VNetConfig = VNetConfig()) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.depth
        ch = [cfg.base_channels * 2 ** l for l in range(d + 1)]
        norm, act = cfg.norm, cfg.activation
        self.stem = ConvNormAct(cfg.in_channels, ch[0], 3, norm=norm, act=act)

        self.enc = nn.ModuleList([self._stage(ch[l], ch[l], cfg.encoder_convs[l]) for l in range(d)])
        self.enc_attn = nn.ModuleList([
            ChannelSpatialAttention(ch[l], cfg.se_reduction, cfg.se_suppress_below, cfg.spatial_kernel)
            if cfg.attention else nn.Identity() for l in range(d)])
        self.down = nn.ModuleList([Down(ch[l], ch[l + 1], norm, act) for l in range(d)])
        if cfg.dilated_bottleneck:
            self.bottleneck: nn.Module = DilatedBottleneck(ch[d], cfg.dilation_rates, norm, act)
        else:
            self.bottleneck = self._stage(ch[d], ch[d], cfg.bottleneck_convs)

        self.up = nn.ModuleList([Up(ch[l + 1], ch[l], norm, act) for l in range(d)])
        # Short connection: 1x1x1 conv of the encoder features to half their channels.
        self.short = nn.ModuleList([ConvNormAct(ch[l], ch[l] // 2, 1, norm=norm, act=act)
                                    for l in range(d)]) if cfg.short_connection else None
        fused = [cfg.fusion and l >= cfg.fusion_from_level for l in range(d)]
        self.fusion = nn.ModuleList([MultiScaleFusion(ch[:d], ch[l], ch[l] // 2) if fused[l] else nn.Identity()
                                     for l in range(d)]) if cfg.fusion else None
        self._fused = fused
        dec_in = [2 * ch[l] + (ch[l] // 2 if cfg.short_connection else 0)
                  + (ch[l] // 2 if fused[l] else 0) for l in range(d)]
        # Decoder stages add the up-sampled tensor as residual (no projection needed).
        self.dec = nn.ModuleList([self._stage(dec_in[l], ch[l], cfg.decoder_convs[l], True) for l in range(d)])

        self.head = nn.Conv3d(ch[0], cfg.num_classes, 1)
        # Deep supervision on decoder levels 1..depth-1 (below full resolution).
        self.ds_heads = nn.ModuleList([nn.Conv3d(ch[l], cfg.num_classes, 1) for l in range(1, d)]) \
            if cfg.deep_supervision else None
        self.boundary = nn.Conv3d(ch[0], 1, 1) if cfg.boundary_head else None

    def _stage(self, in_ch: int, out_ch: int, n_convs: int, external_residual: bool = False) -> nn.Module:
        c = self.config
        if c.block == "mdf":
            return MDFBlock(in_ch, out_ch, n_convs, c.norm, c.activation, c.se_reduction,
                            c.se_suppress_below, c.spatial_kernel, external_residual)
        return ResidualStage(in_ch, out_ch, n_convs, c.norm, c.activation, external_residual=external_residual)

    def encoder_stage(self, l: int, h: torch.Tensor) -> torch.Tensor:
        return self.enc_attn[l](self.enc[l](h))

    def decoder_stage(self, l: int, h: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        up = self.up[l](h)
        parts = [up, skips[l]]
        if self.short is not None:
            parts.append(self.short[l](skips[l]))
        if self._fused[l]:
            parts.append(self.fusion[l](skips, up))
        return self.dec[l](torch.cat(parts, dim=1), residual=up)


# Presets. PAPER: two 3x3x3 convs per stage (paper section 3.1), all modules on,
# base 22 channels chosen so that ImprovedVNet(PAPER) has 14,785,597 parameters
# (paper: 14.8 M; base 16 gives 7.9 M, base 24 gives 17.7 M). The 0.05 SE
# suppression stays off; use dataclasses.replace(PAPER, se_suppress_below=0.05).
PAPER = VNetConfig(base_channels=22)
# CPU-friendly configs (same modules, narrower, one conv per stage).
SMALL = VNetConfig(base_channels=8, encoder_convs=(1, 1, 1, 1), bottleneck_convs=1,
                   decoder_convs=(1, 1, 1, 1))  # 1,221,129 parameters
TINY = VNetConfig(base_channels=4, encoder_convs=(1, 1, 1, 1), bottleneck_convs=1,
                  decoder_convs=(1, 1, 1, 1))  # 306,437 parameters
