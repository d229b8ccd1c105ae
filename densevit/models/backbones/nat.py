"""NAT and DiNAT: hierarchical backbones built on (dilated) neighborhood attention.

NAT (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023) and DiNAT (Hassani & Shi,
"Dilated Neighborhood Attention Transformer", 2022): a conv stem to stride 4, four levels of
neighborhood-attention blocks with 3x3 stride-2 conv downsampling between them. DiNAT is NAT with
dilations, alternating 1 (local) and a per-level value (sparse, global-ish) from block to block.

Parameter names follow the official SHI-Labs code (``patch_embed.proj.0``, ``levels.0.blocks.0.
attn.qkv``, ``levels.0.blocks.0.attn.rpb``, ``levels.0.downsample.reduction``, output norms
``norm0``..``norm3`` as its dense-prediction backbones name them), so official checkpoints load
after ``densevit.checkpoint.nat.convert_nat`` only drops the classifier.

timm has no NAT, and its ``Mlp`` / ``DropPath`` are reused here; the attention itself is
``densevit.ops.na2d``. What is written here: the stem, the conv downsampler, the attention module
(with the relative position bias ``rpb`` and the small-map padding of the NATTEN module the
official models were trained with) and the level/backbone wiring.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn
from torch.utils.checkpoint import checkpoint

from densevit.models.contract import Backbone, FeatureSpec
from densevit.ops import na2d
from densevit.registry import MODELS

__all__ = ['NAT', 'DiNAT', 'dinat_dilations']


def dinat_dilations(depths: Sequence[int], level_dilations: Sequence[int]) -> list[list[int]]:
    """DiNAT's per-block dilations: within level i, blocks alternate 1 and ``level_dilations[i]``.

    ``dinat_dilations([3, 4], [8, 4])`` is ``[[1, 8, 1], [1, 4, 1, 4]]`` (the ImageNet-224 pattern).
    """
    return [[1 if j % 2 == 0 else d for j in range(depth)]
            for depth, d in zip(depths, level_dilations)]


class ConvTokenizer(nn.Module):
    """Stem: two 3x3 stride-2 convs (to stride 4), then LayerNorm over channels.

    Any input size works: each conv (padding 1) gives ceil(side / 2), so the output is
    ceil(H / 4) x ceil(W / 4) without padding the image first.
    """

    def __init__(self, *, in_chans: int, embed_dim: int) -> None:
        """
        Args:
            in_chans: input image channels.
            embed_dim: output channels (the first conv gives ``embed_dim // 2``).
        """
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).permute(0, 2, 3, 1)  # (B, C, H/4, W/4) -> (B, H/4, W/4, C)
        return self.norm(x)


class ConvDownsampler(nn.Module):
    """3x3 stride-2 conv (no bias) doubling the channels, then LayerNorm; ceil(side / 2) out."""

    def __init__(self, *, dim: int) -> None:
        """
        Args:
            dim: input channels; the output has ``2 * dim``.
        """
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)
        x = self.reduction(x).permute(0, 2, 3, 1)  # (B, 2C, H/2, W/2) -> (B, H/2, W/2, 2C)
        return self.norm(x)


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighborhood attention on a (B, H, W, C) map, with NAT's relative position
    bias ``rpb`` (heads, 2k-1, 2k-1).

    Small maps as the NATTEN module the official NAT / DiNAT models were trained with
    (``natten.NeighborhoodAttention2D``, 0.14 to 0.15): along an axis shorter than
    ``kernel_size * dilation`` the map is zero-padded at the bottom / right up to that length
    before the qkv projection, attended with the dilation unchanged, and cropped back. The padded
    tokens take part as keys (their keys and values are the projection biases). So at any size a
    block attends as at its training size, e.g. the COCO DiNAT setting, dilation 28 at stride 4,
    on a 196-token side even when the map is smaller (multi-scale testing at 0.5).
    """

    def __init__(self, *, dim: int, num_heads: int, kernel_size: int, qkv_bias: bool = True,
                 proj_drop: float = 0.0) -> None:
        """
        Args:
            dim: channels; must divide by ``num_heads``.
            num_heads: attention heads.
            kernel_size: odd neighborhood side.
            qkv_bias: bias in the qkv projection.
            proj_drop: dropout after the output projection.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd and positive, got {kernel_size}')
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
        trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, dilation: int = 1) -> torch.Tensor:
        b, h, w, c = x.shape
        span = self.kernel_size * dilation  # the least side na2d takes at this dilation
        pad_h, pad_w = max(0, span - h), max(0, span - w)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, H, W, C) -> (B, H', W', C)
        hp, wp = h + pad_h, w + pad_w
        # (B, H', W', 3C) -> (B, H', W', 3, heads, C/heads)
        qkv = self.qkv(x).reshape(b, hp, wp, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.unbind(3)  # each (B, H', W', heads, C/heads)
        out = na2d(q, k, v, self.kernel_size, dilation=dilation, rpb=self.rpb)
        out = out[:, :h, :w].reshape(b, h, w, c)  # (B, H, W, heads, C/heads) -> (B, H, W, C)
        return self.proj_drop(self.proj(out))


class NATBlock(nn.Module):
    """Pre-norm transformer block: x + NA(LN(x)), x + MLP(LN(x)), optional layer scale."""

    def __init__(self, *, dim: int, num_heads: int, kernel_size: int, dilation: int,
                 mlp_ratio: float, qkv_bias: bool = True, drop: float = 0.0,
                 drop_path: float = 0.0, layer_scale: float | None = None) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            kernel_size: neighborhood side.
            dilation: the block's dilation (maps shorter than ``kernel_size * dilation`` are
                padded up to it, see ``NeighborhoodAttention2d``).
            mlp_ratio: MLP hidden width / dim.
            qkv_bias: bias in the qkv projection.
            drop: dropout after the attention projection and in the MLP.
            drop_path: stochastic depth rate of both residual branches.
            layer_scale: initial value of the per-channel residual scales ``gamma1`` / ``gamma2``;
                None for no layer scale.
        """
        super().__init__()
        self.dilation = dilation
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2d(dim=dim, num_heads=num_heads, kernel_size=kernel_size,
                                            qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), drop=drop)
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn(self.norm1(x), self.dilation)
        mlp_in = x + self.drop_path(attn if self.gamma1 is None else self.gamma1 * attn)
        mlp = self.mlp(self.norm2(mlp_in))
        return mlp_in + self.drop_path(mlp if self.gamma2 is None else self.gamma2 * mlp)


class NATLevel(nn.Module):
    """One resolution level: its blocks, then (except for the last level) the downsampler.

    ``forward`` returns the level's output before downsampling (the feature map) and the input of
    the next level.
    """

    def __init__(self, *, blocks: Sequence[NATBlock], downsample: nn.Module | None,
                 with_cp: bool = False) -> None:
        """
        Args:
            blocks: the level's blocks, in order.
            downsample: the module taking the map to the next level, or None for the last level.
            with_cp: activation checkpointing of each block while training with gradients.
        """
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (x if self.downsample is None else self.downsample(x))


@dataclass(frozen=True)
class _Arch:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: int  # heads at level 0, doubling per level
    mlp_ratio: float
    layer_scale: float | None
    drop_path_rate: float


_NAT_ARCHS = {
    'mini': _Arch(64, (3, 4, 6, 5), 2, 3.0, None, 0.2),
    'tiny': _Arch(64, (3, 4, 18, 5), 2, 3.0, None, 0.2),
    'small': _Arch(96, (3, 4, 18, 5), 3, 2.0, 1e-5, 0.3),
    'base': _Arch(128, (3, 4, 18, 5), 4, 2.0, 1e-5, 0.5),
}
# As the official DiNAT sizes: small and large without layer scale, base with it.
_DINAT_ARCHS = {
    'mini': _NAT_ARCHS['mini'],
    'tiny': _NAT_ARCHS['tiny'],
    'small': _Arch(96, (3, 4, 18, 5), 3, 2.0, None, 0.3),
    'base': _NAT_ARCHS['base'],
    'large': _Arch(192, (3, 4, 18, 5), 6, 2.0, None, 0.35),
}


@MODELS.register_module()
class NAT(Backbone):
    """Neighborhood Attention Transformer backbone: maps at strides 4, 8, 16, 32 named
    's4'..'s32', each through its own LayerNorm, returned as (B, C, ceil(H/s), ceil(W/s)).

    Any input size runs: a block whose map is shorter than ``kernel_size * dilation`` along an
    axis pads it up to that for attention and crops after, as the official models' NATTEN module
    did (see ``NeighborhoodAttention2d``).

    Layer ids (for layer-wise lr decay): 0 for the stem, blocks 1..sum(depths) numbered
    consecutively across levels, a downsampler takes the id of the block before it, the output
    norms ``num_layers + 1``.
    """

    arch_settings: dict[str, _Arch] = _NAT_ARCHS
    default_level_dilations: tuple[int, ...] | None = None  # NAT: dilation 1 everywhere

    def __init__(self, *, arch: str = 'tiny', embed_dim: int | None = None,
                 depths: Sequence[int] | None = None, num_heads: Sequence[int] | None = None,
                 mlp_ratio: float | None = None, kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | None = None,
                 layer_scale: float | None = None, drop_path_rate: float | None = None,
                 drop_rate: float = 0.0, qkv_bias: bool = True, in_chans: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), with_cp: bool = False) -> None:
        """
        Args:
            arch: size preset, one of ``arch_settings`` (NAT: mini/tiny/small/base; DiNAT also
                large); the arguments below left at None take the preset's value.
            embed_dim: channels of level 0 (doubling per level).
            depths: blocks per level.
            num_heads: heads per level (preset: doubling from 2/2/3/4/6).
            mlp_ratio: MLP hidden width / channels.
            kernel_size: odd neighborhood side (7 in all published models).
            dilations: per-level lists of per-block dilations, as the official configs give them
                (e.g. COCO DiNAT-T ``[[1, 28, 1], [1, 7, 1, 14], ...]``); None = the class default
                (NAT: all 1; DiNAT: the ImageNet-224 pattern 1/8, 1/4, 1/2, 1/1).
            layer_scale: initial layer-scale value; None = preset (1e-5 for NAT-S/B and DiNAT-B),
                0 = no layer scale.
            drop_path_rate: stochastic depth, rising linearly over the blocks to this value.
            drop_rate: dropout after the stem, the attention projections and in the MLPs.
            qkv_bias: bias in the qkv projections.
            in_chans: input image channels.
            out_indices: levels (0..3) whose maps are returned, as 's4', 's8', 's16', 's32'.
            with_cp: activation checkpointing of each block while training with gradients: its
                activations are recomputed in the backward pass instead of kept.
        """
        super().__init__()
        if arch not in self.arch_settings:
            raise ValueError(f'{type(self).__name__} arch {arch!r} is unknown; '
                             f'choose one of {sorted(self.arch_settings)}')
        preset = self.arch_settings[arch]
        embed_dim = preset.embed_dim if embed_dim is None else embed_dim
        depths = tuple(preset.depths if depths is None else depths)
        num_levels = len(depths)
        if num_heads is None:
            num_heads = [preset.num_heads * 2 ** i for i in range(num_levels)]
        mlp_ratio = preset.mlp_ratio if mlp_ratio is None else mlp_ratio
        layer_scale = preset.layer_scale if layer_scale is None else (layer_scale or None)
        drop_path_rate = preset.drop_path_rate if drop_path_rate is None else drop_path_rate
        if len(num_heads) != num_levels:
            raise ValueError(f'num_heads {list(num_heads)} must give one value per level of '
                             f'depths {list(depths)}')
        dilations = self._resolve_dilations(dilations, depths)
        out_indices = tuple(out_indices)
        if not out_indices or any(i not in range(num_levels) for i in out_indices):
            raise ValueError(f'out_indices {list(out_indices)} must be a non-empty subset of '
                             f'{list(range(num_levels))}')

        self.depths = depths
        self.out_indices = out_indices
        self.num_layers = sum(depths)
        channels = [embed_dim * 2 ** i for i in range(num_levels)]
        self.out_features = {f's{4 * 2 ** i}': FeatureSpec(channels[i], 4 * 2 ** i)
                             for i in out_indices}

        self.patch_embed = ConvTokenizer(in_chans=in_chans, embed_dim=embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth rising linearly from 0 to drop_path_rate over the blocks
        rates = [drop_path_rate * i / max(1, self.num_layers - 1) for i in range(self.num_layers)]
        self.levels = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            blocks = [NATBlock(dim=channels[i], num_heads=num_heads[i], kernel_size=kernel_size,
                               dilation=dilations[i][j], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                               drop=drop_rate, drop_path=rates[first + j], layer_scale=layer_scale)
                      for j in range(depth)]
            downsample = ConvDownsampler(dim=channels[i]) if i < num_levels - 1 else None
            self.levels.append(NATLevel(blocks=blocks, downsample=downsample, with_cp=with_cp))
        for i in out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(channels[i]))
        # timm's ViT init: truncated-normal (std 0.02) linear weights, zero biases
        self.apply(partial(init_weights_vit_timm, needs_reset=False))

    def _resolve_dilations(self, dilations: Sequence[Sequence[int]] | None,
                           depths: tuple[int, ...]) -> list[list[int]]:
        name = type(self).__name__
        if dilations is None:
            if self.default_level_dilations is None:
                return [[1] * d for d in depths]
            if len(self.default_level_dilations) != len(depths):
                raise ValueError(f'{name} with {len(depths)} levels needs explicit dilations '
                                 f'(the default covers {len(self.default_level_dilations)})')
            return dinat_dilations(depths, self.default_level_dilations)
        dilations = [list(level) for level in dilations]
        if [len(level) for level in dilations] != list(depths):
            raise ValueError(f'{name} dilations {dilations} must give one value per block of '
                             f'depths {list(depths)}')
        if any(d < 1 for level in dilations for d in level):
            raise ValueError(f'{name} dilations {dilations} must all be >= 1')
        return dilations


    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.pos_drop(self.patch_embed(images))  # (B, ceil(H/4), ceil(W/4), C)
        outputs = {}
        for i, level in enumerate(self.levels):
            feat, x = level(x)
            if i in self.out_indices:
                feat = getattr(self, f'norm{i}')(feat)
                # (B, H/s, W/s, C) -> (B, C, H/s, W/s)
                outputs[f's{4 * 2 ** i}'] = feat.permute(0, 3, 1, 2).contiguous()
        return outputs

    def layer_id(self, param_name: str) -> int:
        """0 for the stem, 1..sum(depths) for the blocks in order, a level's downsampler with its
        last block, sum(depths) + 1 for the output norms."""
        if param_name.startswith('patch_embed.'):
            return 0
        if re.match(r'norm\d+\.', param_name):
            return self.num_layers + 1
        match = re.match(r'levels\.(\d+)\.(blocks\.(\d+)|downsample)\.', param_name)
        if match is None:
            raise ValueError(f'{type(self).__name__}.layer_id: parameter {param_name!r} is not '
                             f'under patch_embed, levels.<i>.blocks.<j>, levels.<i>.downsample '
                             f'or norm<i>')
        level = int(match.group(1))
        first = sum(self.depths[:level])
        if match.group(3) is None:  # downsample: with the level's last block
            return first + self.depths[level]
        return first + int(match.group(3)) + 1

    def no_weight_decay(self) -> set[str]:
        """The relative position biases, ``levels.<i>.blocks.<j>.attn.rpb``."""
        return {name for name, _ in self.named_parameters() if name.endswith('.rpb')}

    def checkpoint_optional_keys(self) -> set[str]:
        """The per-level output norms ``norm<i>``: classification checkpoints have none."""
        return {key for key in self.state_dict() if re.match(r'norm\d+\.', key)}


@MODELS.register_module()
class DiNAT(NAT):
    """Dilated Neighborhood Attention Transformer backbone: NAT whose blocks alternate dilation 1
    and a per-level dilation. The default is the ImageNet-224 pattern (levels 8, 4, 2, 1); dense
    configs pass their own ``dilations`` (e.g. COCO DiNAT-T ``[[1, 28, 1], [1, 7, 1, 14],
    [1, 3, 1, 5, 1, 7, ...], [1, 3, 1, 3, 1]]``). Maps smaller than kernel x dilation are padded
    (see ``NAT``). Sizes mini/tiny/small/base/large."""

    arch_settings = _DINAT_ARCHS
    default_level_dilations = (8, 4, 2, 1)
