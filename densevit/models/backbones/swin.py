"""Swin Transformer (v1) backbone for dense prediction: named maps at strides 4, 8, 16 and 32.

The patch embedding, stages, blocks, window attention and patch merging are timm's
(``timm.models.swin_transformer.SwinTransformer``), under timm's parameter names, so timm
checkpoints load directly and official Microsoft ones after
``densevit.checkpoint.swin.convert_swin``. What timm lacks, and this file adds:

- Shifted-window attention at any feature size, as the official detection / segmentation Swin
  (Swin-Transformer-Object-Detection, mmseg's ``SwinTransformer``) computes it: the map is padded
  at the bottom and right to a multiple of the window, then rolled by half a window in every
  shifted block (whatever the map size), and the shift mask is built on the padded size. Padded
  tokens are zeros after ``norm1`` and take part in attention as keys, unmasked; official
  fine-tuned checkpoints depend on that. (timm instead rolls before padding and fixes its layout
  from ``img_size`` when the model is built.)
- ``mask_padding=True``, a densevit option off by default: one mask also hides padded keys, and
  along an axis no longer than the window there is no shift, so every token attends to exactly the
  real tokens of its window, however much padding there is.
- Padding the image to a multiple of the patch size (timm's PatchEmbed requires divisibility).
- A LayerNorm per output level, as the dense-prediction Swin has, and (B, C, H, W) maps by name.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_partition, window_reverse
from torch import nn
from torch.utils.checkpoint import checkpoint

from densevit.registry import MODELS

from ..contract import Backbone, FeatureSpec

__all__ = ['Swin', 'SWIN_ARCHS', 'shifted_window_mask']

# embed_dim, depths and heads of the published Swin v1 sizes (heads double at every stage).
SWIN_ARCHS: dict[str, dict] = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'large': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}

# additive mask value of the reference Swin: finite, so a fully masked row stays finite
_MASKED = -100.0


def _window_shift(size: int, window: int, shifted: bool, mask_padding: bool) -> int:
    """Shift along one axis: half a window in a shifted block (official Swin, at any size); with
    ``mask_padding`` none where one window covers the axis."""
    if not shifted or (mask_padding and size <= window):
        return 0
    return window // 2


def _axis_groups(size: int, padded: int, window: int, shift: int, mask_padding: bool,
                 device: torch.device | None) -> torch.Tensor:
    """Cell index of every position along one padded axis, in unrolled coordinates; with
    ``mask_padding`` -1 for the padding.

    Rolling by ``shift`` and cutting windows of ``window`` is, in the original coordinates, a grid
    whose cells start at ``shift + k * window`` (the first cell is ``[0, shift)``). Without
    ``mask_padding`` the padding belongs to the cell it falls in, which within every window gives
    the official partition: rolled positions ``[0, P - ws)``, ``[P - ws, P - shift)`` and
    ``[P - shift, P)`` of the padded length ``P``.
    """
    pos = torch.arange(padded, device=device)
    groups = torch.div(pos - shift, window, rounding_mode='floor') + 1
    if not mask_padding:
        return groups
    return torch.where(pos < size, groups, torch.full_like(groups, -1))


def shifted_window_mask(height: int, width: int, window: int, shift: tuple[int, int], *,
                        mask_padding: bool = False, device: torch.device | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """Additive attention mask for (shifted) window attention on a ``height`` x ``width`` map.

    The map is padded at the bottom and right to a multiple of ``window`` and then rolled by
    ``-shift``; the mask is laid out like the windows of that rolled map. A key is hidden (-100)
    from a query when it lies in a different cell of the unrolled map (the wrapped-around border
    of a shifted block) or, with ``mask_padding``, when it is padding.

    Args:
        height: rows of the map before padding.
        width: columns of the map before padding.
        window: window side.
        shift: (rows, columns) roll of the shifted block, (0, 0) for a plain one.
        mask_padding: also hide padded keys (densevit's option); False is the official Swin, whose
            mask separates the shifted regions only.
        device: where to build the mask.
        dtype: its dtype (that of the attention logits).

    Returns:
        (nW, window*window, window*window) mask, or None if nothing needs masking.
    """
    pad_h, pad_w = -height % window, -width % window
    if not (any(shift) or (mask_padding and (pad_h or pad_w))):
        return None
    hp, wp = height + pad_h, width + pad_w
    rows = _axis_groups(height, hp, window, shift[0], mask_padding, device)
    cols = _axis_groups(width, wp, window, shift[1], mask_padding, device)
    # one label per cell of the unrolled map, -1 for masked padding: (Hp, Wp)
    labels = rows[:, None] * (wp // window + 2) + cols[None, :]
    labels = torch.where((rows[:, None] < 0) | (cols[None, :] < 0), torch.full_like(labels, -1),
                         labels)
    labels = torch.roll(labels, shifts=(-shift[0], -shift[1]), dims=(0, 1))
    # (Hp, Wp) -> (1, Hp, Wp, 1) -> (nW, ws, ws, 1) -> (nW, ws*ws)
    windows = window_partition(labels[None, :, :, None], (window, window)).reshape(
        -1, window * window)
    # masked padding has its own label, so real tokens never attend to it
    hidden = windows[:, :, None] != windows[:, None, :]
    mask = torch.zeros(hidden.shape, device=device, dtype=dtype)
    return mask.masked_fill(hidden, _MASKED)


def _window_block(block: nn.Module, x: torch.Tensor, shift: tuple[int, int],
                  mask: torch.Tensor | None) -> torch.Tensor:
    """One timm ``SwinTransformerBlock`` (its norms, attention, mlp, drop paths) on (B, H, W, C),
    with pad-then-roll windows and the ``shifted_window_mask`` of this map size (``mask``)."""
    _, height, width, channels = x.shape
    window = block.window_size[0]
    pad_h, pad_w = -height % window, -width % window
    y = F.pad(block.norm1(x), (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
    if any(shift):
        y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    hp, wp = y.shape[1:3]
    # (B, Hp, Wp, C) -> (B*nW, ws, ws, C) -> (B*nW, ws*ws, C)
    windows = window_partition(y, (window, window)).reshape(-1, window * window, channels)
    windows = block.attn(windows, mask=mask)
    # (B*nW, ws*ws, C) -> (B*nW, ws, ws, C) -> (B, Hp, Wp, C)
    y = window_reverse(windows.reshape(-1, window, window, channels), (window, window), hp, wp)
    if any(shift):
        y = torch.roll(y, shifts=shift, dims=(1, 2))
    x = x + block.drop_path1(y[:, :height, :width])
    return x + block.drop_path2(block.mlp(block.norm2(x)))


@MODELS.register_module()
class Swin(Backbone):
    """Swin Transformer v1 (T/S/B/L) giving maps ``'s4'``, ``'s8'``, ``'s16'``, ``'s32'``
    (patch size 4), each through its own LayerNorm, at any input size (ceil(H / stride) maps).

    At sizes the window does not divide it computes what the official detection / segmentation
    Swin computes (pad, then shift, padded tokens attended); ``mask_padding=True`` hides them.
    """

    def __init__(self, *, arch: str = 'tiny', embed_dim: int | None = None,
                 depths: Sequence[int] | None = None, num_heads: Sequence[int] | None = None,
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path_rate: float = 0.1, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, patch_size: int = 4, in_chans: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), mask_padding: bool = False,
                 with_cp: bool = False) -> None:
        """
        Args:
            arch: published size, one of ``SWIN_ARCHS`` ('tiny', 'small', 'base', 'large').
            embed_dim: channels of the first stage (doubling per stage); None takes the arch's.
            depths: blocks per stage; None takes the arch's.
            num_heads: attention heads per stage; None takes the arch's.
            window_size: window side, 7 for the 224 models, 12 for the 384 / 22k ones.
            mlp_ratio: hidden width of the MLP relative to the channels.
            qkv_bias: learn a bias for query, key and value.
            drop_path_rate: stochastic depth of the last block, rising linearly from 0.
            attn_drop_rate: dropout on attention weights.
            proj_drop_rate: dropout after the attention projection and in the MLP.
            patch_size: side of the patch embedding (the stride of the first map).
            in_chans: image channels.
            out_indices: stages whose outputs are returned; later stages are not built.
            mask_padding: a densevit deviation, off in every published config: hide the zero
                padding of maps the window does not divide from attention, and do not shift along
                an axis no longer than the window. Off, the blocks compute what the official Swin
                for detection / segmentation computes, which its fine-tuned checkpoints need.
            with_cp: activation checkpointing of each block while training with gradients: its
                activations are recomputed in the backward pass instead of kept (Swin-L recipes).
        """
        super().__init__()
        if arch not in SWIN_ARCHS:
            raise ValueError(f'Swin arch {arch!r} is unknown; choose one of {sorted(SWIN_ARCHS)} '
                             f'(and override embed_dim / depths / num_heads if needed)')
        spec = SWIN_ARCHS[arch]
        embed_dim = spec['embed_dim'] if embed_dim is None else embed_dim
        depths = tuple(spec['depths'] if depths is None else depths)
        num_heads = tuple(spec['num_heads'] if num_heads is None else num_heads)
        if len(num_heads) != len(depths):
            raise ValueError(f'Swin num_heads {num_heads} needs one entry per stage of '
                             f'depths {depths}')
        out_indices = tuple(sorted(set(out_indices)))
        if not out_indices or not all(0 <= i < len(depths) for i in out_indices):
            raise ValueError(f'Swin out_indices {out_indices} must be stage indices in '
                             f'0..{len(depths) - 1}')
        # timm builds the parts; always_partition keeps every block at the configured window (the
        # per-size layout is decided in forward) and strict_img_size=False builds no fixed mask.
        timm_swin = SwinTransformer(
            img_size=window_size * patch_size * 2 ** (len(depths) - 1), patch_size=patch_size,
            in_chans=in_chans, num_classes=0, global_pool='', embed_dim=embed_dim, depths=depths,
            num_heads=num_heads, window_size=window_size, always_partition=True,
            strict_img_size=False, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            proj_drop_rate=proj_drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate)
        self.patch_size = patch_size
        self.window_size = window_size
        self.mask_padding = mask_padding
        self.with_cp = with_cp
        self.depths = depths[:out_indices[-1] + 1]
        self.patch_embed = timm_swin.patch_embed
        self.layers = timm_swin.layers[:out_indices[-1] + 1]

        self._out_names: dict[int, str] = {}
        self.out_features = {}
        for i in out_indices:
            name = f's{patch_size * 2 ** i}'
            self._out_names[i] = name
            self.out_features[name] = FeatureSpec(channels=embed_dim * 2 ** i,
                                                  stride=patch_size * 2 ** i)
        self.out_norms = nn.ModuleDict({name: nn.LayerNorm(spec.channels)
                                        for name, spec in self.out_features.items()})
        self.num_layers = sum(self.depths)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = images.shape[-2:]
        p = self.patch_size
        images = F.pad(images, (0, -width % p, 0, -height % p))
        x = self.patch_embed(images)  # (B, ceil(H/p), ceil(W/p), C), timm's NHWC output
        features = {}
        for i, stage in enumerate(self.layers):
            x = stage.downsample(x)  # identity in stage 0; timm pads odd sizes, giving ceil(H/2)
            h, w = x.shape[1:3]
            masks: dict[tuple[int, int], torch.Tensor | None] = {}
            for block in stage.blocks:
                shifted = any(block.shift_size)
                shift = (_window_shift(h, self.window_size, shifted, self.mask_padding),
                         _window_shift(w, self.window_size, shifted, self.mask_padding))
                if shift not in masks:
                    masks[shift] = shifted_window_mask(
                        h, w, self.window_size, shift, mask_padding=self.mask_padding,
                        device=x.device, dtype=x.dtype)
                if self.with_cp and self.training and torch.is_grad_enabled():
                    x = checkpoint(_window_block, block, x, shift, masks[shift],
                                   use_reentrant=False)
                else:
                    x = _window_block(block, x, shift, masks[shift])
            name = self._out_names.get(i)
            if name is not None:
                # (B, H, W, C) -> (B, C, H, W)
                features[name] = self.out_norms[name](x).permute(0, 3, 1, 2).contiguous()
        return features

    def layer_id(self, param_name: str) -> int:
        """0 for the patch embedding, 1..sum(depths) for the blocks in order, a stage's patch
        merging with the last block before it, sum(depths) + 1 for the output norms."""
        if param_name.startswith('patch_embed.'):
            return 0
        if param_name.startswith('out_norms.'):
            return self.num_layers + 1
        match = re.match(r'layers\.(\d+)\.(blocks\.(\d+)|downsample)\.', param_name)
        if match is None:
            raise ValueError(f'Swin.layer_id: {param_name!r} is not a Swin parameter (expected '
                             f'patch_embed.*, layers.<i>.blocks.<j>.*, layers.<i>.downsample.* '
                             f'or out_norms.*)')
        stage = int(match.group(1))
        before = sum(self.depths[:stage])
        return before if match.group(3) is None else before + int(match.group(3)) + 1

    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters()
                if name.endswith('relative_position_bias_table')}

    def checkpoint_optional_keys(self) -> set[str]:
        """The per-level output norms: classification checkpoints have none."""
        return {key for key in self.state_dict() if key.startswith('out_norms.')}
