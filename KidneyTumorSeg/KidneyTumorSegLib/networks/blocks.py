"""Building blocks shared by the segmentation networks.

Tensor layout everywhere is (N, C, Z, Y, X): Z is the slice axis. An in-plane
"3x3x1" kernel from the papers is therefore ``kernel_size=(1, 3, 3)`` in torch
order: it mixes Y and X inside a slice but never mixes neighbouring slices.

Every stage-like block accepts ``forward(x, residual=None)`` so the decoder can
hand in the tensor that the residual path should add (V-Net adds the up-sampled
feature, not the wider concatenation).
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "group", "batch")
PAD_MODES = ("replicate", "constant")
ACTIVATIONS = ("prelu", "leakyrelu", "relu")

Size3 = Union[int, Tuple[int, int, int]]


def _triple(v: Size3) -> Tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalization layer; instance norm is the default because training uses batch size 2."""
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        # Largest group count <= 8 that divides the channels (GroupNorm requires divisibility).
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def make_act(kind: str, channels: int) -> nn.Module:
    """Activation; PReLU is per-channel as in the original V-Net."""
    if kind == "prelu":
        return nn.PReLU(channels)
    if kind == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=False)
    if kind == "relu":
        return nn.ReLU(inplace=False)
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


class ConvNormAct(nn.Sequential):
    """Conv3d -> norm -> activation ("same" padding, also for dilated/anisotropic kernels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: Size3 = 3, stride: int = 1,
                 dilation: int = 1, norm: str = "instance", act: Optional[str] = "prelu") -> None:
        k = _triple(kernel_size)
        pad = tuple(dilation * (kk - 1) // 2 for kk in k)
        # No conv bias: the following norm has its own shift.
        layers = [nn.Conv3d(in_ch, out_ch, k, stride=stride, padding=pad, dilation=dilation, bias=False),
                  make_norm(norm, out_ch)]
        if act is not None:
            layers.append(make_act(act, out_ch))
        super().__init__(*layers)


def _projection(in_ch: int, out_ch: int, external_residual: bool) -> Optional[nn.Module]:
    """1x1x1 projection for residual paths whose channel count changes.

    ``external_residual``: the caller always passes ``residual`` (V-Net decoder),
    so no projection parameters are created (they would never get a gradient).
    """
    if external_residual:
        return None
    return nn.Identity() if in_ch == out_ch else nn.Conv3d(in_ch, out_ch, 1, bias=False)


def _residual(proj: Optional[nn.Module], x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.Tensor:
    if residual is not None:
        return residual
    if proj is None:
        raise ValueError("this block was built with external_residual=True; pass residual=")
    return proj(x)


class ResidualStage(nn.Module):
    """V-Net stage: ``n_convs`` 3x3x3 conv-norm-act layers, residual add, activation.

    The last conv has no activation so the add happens before the non-linearity
    (as in V-Net / ResNet). ``residual`` overrides the tensor that is added.
    """

    def __init__(self, in_ch: int, out_ch: int, n_convs: int = 2, norm: str = "instance",
                 act: str = "prelu", kernel_size: Size3 = 3, external_residual: bool = False) -> None:
        super().__init__()
        if n_convs < 1:
            raise ValueError("ResidualStage needs at least one convolution")
        convs = []
        for i in range(n_convs):
            convs.append(ConvNormAct(in_ch if i == 0 else out_ch, out_ch, kernel_size, norm=norm,
                                     act=act if i < n_convs - 1 else None))
        self.convs = nn.Sequential(*convs)
        self.proj = _projection(in_ch, out_ch, external_residual)
        self.act = make_act(act, out_ch)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.act(self.convs(x) + _residual(self.proj, x, residual))


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention (3D).

    Squeeze is the global average over ALL THREE spatial axes (Z, Y, X).
    Excitation: FC (C -> C/reduction) -> ReLU -> FC -> sigmoid, so weights lie in [0, 1].

    ``suppress_below``: the paper zeroes channel weights < 0.05 to drop redundant
    channels. Implemented as a hard mask, which is non-differentiable at the
    threshold and passes zero gradient for suppressed channels, so it is off by
    default (``None``).
    """

    def __init__(self, channels: int, reduction: int = 16, suppress_below: Optional[float] = None,
                 min_hidden: int = 4) -> None:
        super().__init__()
        # Floor on the hidden width: C//16 is 0 or 1 for the small configs, and a
        # single ReLU unit can die and cut the gradient to the whole block.
        hidden = min(channels, max(channels // reduction, min_hidden))
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.suppress_below = suppress_below

    @staticmethod
    def squeeze(x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> (N, C): global average pooling over Z, Y and X."""
        return x.mean(dim=(2, 3, 4))

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Channel weights (N, C) in [0, 1], after the optional suppression."""
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(self.squeeze(x)))))
        if self.suppress_below is not None:
            w = torch.where(w < self.suppress_below, torch.zeros_like(w), w)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)[:, :, None, None, None]


class SpatialAttention(nn.Module):
    """Spatial attention: [channel mean, channel max] -> conv (1x1x1 by default) -> sigmoid -> multiply."""

    def __init__(self, kernel_size: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> (N, 1, Z, Y, X) map in [0, 1]."""
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(desc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)


class ChannelSpatialAttention(nn.Module):
    """CBAM ordering: SE channel attention, then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, suppress_below: Optional[float] = None,
                 spatial_kernel: int = 1) -> None:
        super().__init__()
        self.channel = SEBlock(channels, reduction, suppress_below)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class MDFBlock(nn.Module):
    """Multi-dimension feature block (Masses-Net, KiTS21).

    Two branches on the same input, concatenated:
    - isotropic: ``n_convs`` 3x3x3 convs (3D context), ``out_ch - out_ch // 2`` channels;
    - anisotropic: ``n_convs`` in-plane "3x3x1" convs, i.e. kernel (1, 3, 3) in
      (Z, Y, X) order, ``out_ch // 2`` channels; the convolutions never mix slices
      (instance/group norm statistics are still per volume).
    Then CBAM (SE + spatial attention) and a residual add: out = act(SAM(CAM(cat)) + x).
    """

    def __init__(self, in_ch: int, out_ch: int, n_convs: int = 2, norm: str = "instance",
                 act: str = "prelu", reduction: int = 16, suppress_below: Optional[float] = None,
                 spatial_kernel: int = 1, external_residual: bool = False) -> None:
        super().__init__()
        if out_ch < 2:
            raise ValueError("MDFBlock needs at least 2 output channels")
        n_iso, n_aniso = out_ch - out_ch // 2, out_ch // 2
        self.iso = nn.Sequential(*[ConvNormAct(in_ch if i == 0 else n_iso, n_iso, 3, norm=norm, act=act)
                                   for i in range(n_convs)])
        self.aniso = nn.Sequential(*[ConvNormAct(in_ch if i == 0 else n_aniso, n_aniso, (1, 3, 3),
                                                 norm=norm, act=act) for i in range(n_convs)])
        self.attention = ChannelSpatialAttention(out_ch, reduction, suppress_below, spatial_kernel)
        self.proj = _projection(in_ch, out_ch, external_residual)
        self.act = make_act(act, out_ch)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = torch.cat([self.iso(x), self.aniso(x)], dim=1)
        return self.act(self.attention(m) + _residual(self.proj, x, residual))


class DilatedBottleneck(nn.Module):
    """Hybrid dilated convolution (HDC) bottleneck: 3x3x3 convs with rates (2, 3, 5), residual add.

    Successive co-prime rates fill each other's holes (no gridding); "same"
    padding keeps the spatial size.
    """

    def __init__(self, channels: int, rates: Sequence[int] = (2, 3, 5), norm: str = "instance",
                 act: str = "prelu") -> None:
        super().__init__()
        rates = tuple(rates)
        self.convs = nn.Sequential(*[ConvNormAct(channels, channels, 3, dilation=r, norm=norm,
                                                 act=act if i < len(rates) - 1 else None)
                                     for i, r in enumerate(rates)])
        self.act = make_act(act, channels)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.act(self.convs(x) + (x if residual is None else residual))


class Down(nn.Sequential):
    """2x2x2 stride-2 convolution (learned down-sampling, V-Net), norm, activation."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "instance", act: str = "prelu") -> None:
        super().__init__(nn.Conv3d(in_ch, out_ch, 2, stride=2, bias=False), make_norm(norm, out_ch),
                         make_act(act, out_ch))


class Up(nn.Sequential):
    """2x2x2 stride-2 transposed convolution, norm, activation."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "instance", act: str = "prelu") -> None:
        super().__init__(nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2, bias=False),
                         make_norm(norm, out_ch), make_act(act, out_ch))


def gaussian_mutual_information(a: torch.Tensor, b: torch.Tensor, max_rho2: float = 0.99,
                                eps: float = 1e-6) -> torch.Tensor:
    """Per-sample MI under a joint-Gaussian assumption: -0.5 * log(1 - rho^2).

    ``rho`` is the Pearson correlation of the flattened (N, ...) tensors, i.e. the
    cosine similarity of the mean-centred features. rho^2 is clamped at
    ``max_rho2`` to bound the value (~2.3 nats) and its gradient. Returns (N,).
    """
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    rho = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return -0.5 * torch.log1p(-rho.pow(2).clamp(max=max_rho2))


class MultiScaleFusion(nn.Module):
    """Adaptive multi-scale fusion for one decoder stage (improved V-Net, section 3.2).

    Each encoder scale is reduced by a 1x1x1 conv (to ``out_ch``, which the V-Net
    sets to half the channels of this decoder level, i.e. half of the matching
    encoder scale, so all scales can be summed), resized trilinearly to the
    decoder stage's size, and weighted by its similarity to the decoder feature.

    "Mutual information coefficient" (no formula in the paper): true MI needs
    density estimates (histograms are non-differentiable and costly in 3D). We use
    the Gaussian case instead: the decoder feature is projected by a 1x1x1 conv to
    ``out_ch`` channels, rho = Pearson correlation (cosine of mean-centred,
    flattened features, per sample) with each resized scale, MI = -0.5 log(1 - rho^2),
    which is monotone in |rho|. Weights = softmax over scales of MI times a
    learnable temperature; they sum to 1 per sample. Output: sum_s w_s * f_s.
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: int, out_ch: int) -> None:
        super().__init__()
        self.reduce = nn.ModuleList([nn.Conv3d(c, out_ch, 1) for c in encoder_channels])
        self.query = nn.Conv3d(decoder_channels, out_ch, 1)
        # Temperature stored as a log so it stays positive; init 1.
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def similarity_weights(self, scales: Sequence[torch.Tensor], query: torch.Tensor) -> torch.Tensor:
        """(N, S) softmax weights of already reduced/resized ``scales`` against ``query``."""
        mi = torch.stack([gaussian_mutual_information(s, query) for s in scales], dim=1)
        return torch.softmax(mi * self.log_temperature.exp(), dim=1)

    def forward(self, encoder_feats: Sequence[torch.Tensor], decoder_feat: torch.Tensor,
                return_weights: bool = False):
        size = decoder_feat.shape[2:]
        scales = []
        for conv, f in zip(self.reduce, encoder_feats):
            f = conv(f)  # reduce first: cheaper to resize fewer channels
            if f.shape[2:] != size:
                f = F.interpolate(f, size=size, mode="trilinear", align_corners=False)
            scales.append(f)
        w = self.similarity_weights(scales, self.query(decoder_feat))
        fused = sum(w[:, i, None, None, None, None] * s for i, s in enumerate(scales))
        return (fused, w) if return_weights else fused


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate"
                    ) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """Pad Z, Y, X at their high end to a multiple of ``multiple``; returns (padded, original size).

    If every axis would end up exactly ``multiple`` long, X gets one more block:
    the bottleneck would otherwise be a single voxel, where instance norm fails.
    """
    size = tuple(x.shape[2:])
    target = [max(1, int(math.ceil(s / multiple))) * multiple for s in size]
    if multiple > 1 and all(t == multiple for t in target):
        target[2] *= 2
    extra = [t - s for t, s in zip(target, size)]
    if any(extra):
        # F.pad lists the last axis first: (X_lo, X_hi, Y_lo, Y_hi, Z_lo, Z_hi).
        pad = (0, extra[2], 0, extra[1], 0, extra[0])
        x = F.pad(x, pad, mode=mode) if mode != "constant" else F.pad(x, pad, mode="constant", value=0.0)
    return x, size  # type: ignore[return-value]


def crop_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the spatial axes back to ``size`` (inverse of :func:`pad_to_multiple`)."""
    return x[:, :, : size[0], : size[1], : size[2]]


def _deep_supervision(heads: Optional[nn.ModuleList], decoder_feats: Sequence[torch.Tensor],
                      padded_size: Sequence[int], size: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """Head l (1, 2, ...) on decoder level l, up-sampled trilinearly to the padded input and cropped to
    ``size``; () without heads."""
    if heads is None:
        return ()
    return tuple(crop_to(F.interpolate(head(decoder_feats[l]), size=tuple(padded_size), mode="trilinear",
                                       align_corners=False), size)
                 for l, head in enumerate(heads, start=1))


class NetworkOutput(NamedTuple):
    """Training-mode output of the networks (eval mode returns ``logits`` only).

    - ``logits``: (N, num_classes, Z, Y, X) main prediction, always first;
    - ``deep_supervision``: tuple of auxiliary logits, each up-sampled to and
      cropped at the input size (N, num_classes, Z, Y, X), ordered from the
      decoder stage just below full resolution (1/2) down to the coarsest; empty
      when deep supervision is off;
    - ``boundary``: (N, 1, Z, Y, X) boundary logits, or ``None`` when the head is off.
    """

    logits: torch.Tensor
    deep_supervision: Tuple[torch.Tensor, ...]
    boundary: Optional[torch.Tensor]


class EncoderDecoder(nn.Module):
    """The forward pass both networks share: check and pad the input, stem, encoder levels (their outputs
    kept as skips) with down-sampling, bottleneck, decoder levels up to full resolution, then the heads.

    A subclass sets ``config`` (in_channels, depth, pad_mode), ``stem``, ``down``, ``bottleneck``,
    ``head``, ``ds_heads`` (ModuleList or None), optionally ``boundary`` (1-channel head), and defines
    ``encoder_stage(l, h)`` and ``decoder_stage(l, h, skips)``.
    """

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, NetworkOutput]:
        d = self.config.depth
        if x.dim() != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (N, {self.config.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        x, size = pad_to_multiple(x, 2 ** d, self.config.pad_mode)
        h = self.stem(x)
        skips: List[torch.Tensor] = []
        for l in range(d):
            h = self.encoder_stage(l, h)
            skips.append(h)
            h = self.down[l](h)
        h = self.bottleneck(h)
        dec_feats: List[torch.Tensor] = [h] * d  # every level is filled below
        for l in reversed(range(d)):
            h = self.decoder_stage(l, h, skips)
            dec_feats[l] = h
        logits = crop_to(self.head(h), size)
        if not self.training:
            return logits
        boundary_head = getattr(self, "boundary", None)
        boundary = crop_to(boundary_head(h), size) if boundary_head is not None else None
        return NetworkOutput(logits, _deep_supervision(self.ds_heads, dec_feats, x.shape[2:], size),
                             boundary)
