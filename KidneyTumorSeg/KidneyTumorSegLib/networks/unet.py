"""Stage-1 network: a small 3D residual U-Net with deep supervision (kidney localisation).

Follows the KiTS19 cascade (4-level encoder / decoder, residual blocks, one
1x1x1 "map layer" after each decoder stage, the outputs of all of them being
supervised). Tensors are (N, C, Z, Y, X); any input size works (pad to a
multiple of 2**depth, crop back).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import nn

from .blocks import ConvNormAct, DilatedBottleneck, Down, EncoderDecoder, ResidualStage, Up
from .config_checks import check_common, check_int


@dataclass(frozen=True)
class UNetConfig:
    """Configuration of :class:`ResidualUNet` (frozen; lists are turned into tuples).

    Channels at level l are ``min(base_channels * 2**l, max_channels)``.
    """

    in_channels: int = 1
    num_classes: int = 2  # background, kidney
    base_channels: int = 8
    max_channels: int = 256
    depth: int = 4
    convs_per_block: int = 2
    norm: str = "instance"
    activation: str = "leakyrelu"
    dilated_bottleneck: bool = False
    dilation_rates: Tuple[int, ...] = (2, 3, 5)
    deep_supervision: bool = True
    pad_mode: str = "replicate"

    def __post_init__(self) -> None:
        check_common(self, min_base_channels=1)
        check_int("max_channels", self.max_channels, self.base_channels)
        check_int("convs_per_block", self.convs_per_block, 1)


class ResidualUNet(EncoderDecoder):
    """3D residual U-Net with deep supervision.

    Eval mode: logits (N, num_classes, Z, Y, X). Training mode: a
    :class:`NetworkOutput` with the main logits, the deep-supervision logits of the
    decoder stages below full resolution (``depth - 1`` of them, up-sampled to
    the input size, from 1/2 down to the coarsest) and ``boundary=None``.
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = cfg = config
        d, norm, act, n = cfg.depth, cfg.norm, cfg.activation, cfg.convs_per_block
        ch = [min(cfg.base_channels * 2 ** l, cfg.max_channels) for l in range(d + 1)]
        self.stem = ConvNormAct(cfg.in_channels, ch[0], 3, norm=norm, act=act)
        self.enc = nn.ModuleList([ResidualStage(ch[l], ch[l], n, norm, act) for l in range(d)])
        self.down = nn.ModuleList([Down(ch[l], ch[l + 1], norm, act) for l in range(d)])
        self.bottleneck: nn.Module = (DilatedBottleneck(ch[d], cfg.dilation_rates, norm, act)
                                      if cfg.dilated_bottleneck else ResidualStage(ch[d], ch[d], n, norm, act))
        self.up = nn.ModuleList([Up(ch[l + 1], ch[l], norm, act) for l in range(d)])
        self.dec = nn.ModuleList([ResidualStage(2 * ch[l], ch[l], n, norm, act, external_residual=True)
                                  for l in range(d)])
        self.head = nn.Conv3d(ch[0], cfg.num_classes, 1)
        self.ds_heads = nn.ModuleList([nn.Conv3d(ch[l], cfg.num_classes, 1) for l in range(1, d)]) \
            if cfg.deep_supervision else None

    def encoder_stage(self, l: int, h: torch.Tensor) -> torch.Tensor:
        return self.enc[l](h)

    def decoder_stage(self, l: int, h: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        up = self.up[l](h)
        # Residual path adds the up-sampled tensor (same channels as the output).
        return self.dec[l](torch.cat([up, skips[l]], dim=1), residual=up)


# CPU-friendly default for the stage-1 kidney localiser.
STAGE1_DEFAULT = UNetConfig()  # 1,795,888 parameters
# Very small variant for tests / smoke runs.
STAGE1_TINY = UNetConfig(base_channels=4, max_channels=32, convs_per_block=1)  # 165,788 parameters
