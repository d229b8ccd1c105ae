"""Plain Vision Transformer backbone in the ViTDet style (also SAM's image encoder, and
Segmenter's encoder).

Patch embedding (input padded to a multiple of the patch size), an absolute position embedding
stored at the pretraining grid as (1, Hp, Wp, C) and resized to the input grid, pre-norm blocks
with window attention (zero-padded where the grid does not divide) and global attention at
``global_attn_indexes``, optional decomposed relative position bias and LayerScale (DeiT-III,
DINOv2). The output is one map at stride ``patch_size``, named ``'s{patch_size}'``.

Segmenter's encoder (``class_token=True``): a class token (and a distillation token for the DeiT
ones) with its own position embedding ``cls_pos_embed`` is prepended to the patch tokens, carried
through every block and the final norm, and dropped before the map is returned; Segmenter resizes
position embeddings bilinearly (``pos_embed_interpolation='bilinear'``).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; the relative
position bias is passed as its float ``attn_mask``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, trunc_normal_
from torch import nn
from timm.models.vision_transformer import init_weights_vit_timm
from torch.utils.checkpoint import checkpoint

from densevit.ops.window import rel_pos_attention, window_partition, window_unpartition
from densevit.registry import MODELS

from ..contract import Backbone, FeatureSpec

__all__ = ['ViT', 'VIT_ARCHS']

# Model sizes (ViTDet's choices for global blocks and drop path; tiny and small follow base).
VIT_ARCHS: dict[str, dict] = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3, global_attn_indexes=(2, 5, 8, 11),
                 drop_path_rate=0.1),
    'small': dict(embed_dim=384, depth=12, num_heads=6, global_attn_indexes=(2, 5, 8, 11),
                  drop_path_rate=0.1),
    'base': dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
                 drop_path_rate=0.1),
    'large': dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23),
                  drop_path_rate=0.4),
    'huge': dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31),
                 drop_path_rate=0.5),
}


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid, with optional decomposed relative
    position bias (timm's Attention works on token lists and has no such bias), or over a
    (B, N, C) token list (no relative position bias)."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool, use_rel_pos: bool,
                 rel_pos_size: tuple[int, int] | None) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads; must divide ``dim``.
            qkv_bias: add a bias to the query, key and value projections.
            use_rel_pos: add the decomposed relative position bias.
            rel_pos_size: (H, W) grid the relative position tables are sized for (the window, or
                the global grid at ``img_size``); other grids resample the tables.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if rel_pos_size is None:
                raise ValueError('use_rel_pos=True needs rel_pos_size (the grid of the tables)')
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (B, H, W, C) grid or (B, N, C) token list
        b, n = shape[0], math.prod(shape[1:-1])
        # (B, H, W, 3C) or (B, N, 3C) -> (B, N, 3, heads, C/heads) -> (3, B, heads, N, C/heads)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.use_rel_pos:
            h, w = shape[1:3]
            # the (B, heads, H*W, H*W) bias goes in as SDPA's float attn_mask, in row slices
            # when large (global blocks)
            x = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        # (B, heads, N, C/heads) -> (B, N, heads, C/heads) -> (B, H, W, C) or (B, N, C)
        x = x.transpose(1, 2).reshape(shape)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block over a (B, H, W, C) grid, windowed when ``window_size > 0``
    (global blocks also take a (B, N, C) token list)."""

    def __init__(self, dim: int, *, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                 drop_path: float, norm_layer: Callable[[int], nn.Module],
                 act_layer: Callable[[], nn.Module], use_rel_pos: bool, window_size: int,
                 rel_pos_size: tuple[int, int] | None,
                 layer_scale: float | None = None) -> None:
        """
        Args:
            dim: channels.
            num_heads: attention heads.
            mlp_ratio: MLP hidden width / ``dim``.
            qkv_bias: bias on the query, key and value projections.
            drop_path: stochastic depth rate of this block.
            norm_layer: builds a norm over the channel (last) dim.
            act_layer: MLP activation.
            use_rel_pos: decomposed relative position bias in attention.
            window_size: side of the attention windows; 0 means global attention.
            rel_pos_size: grid the relative position tables are sized for.
            layer_scale: initial value of the per-channel scales ``ls1.gamma`` / ``ls2.gamma`` of
                the two residual branches (timm's LayerScale); None for none.
        """
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                              use_rel_pos=use_rel_pos, rel_pos_size=rel_pos_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = x.shape[1:3]
            # (B, H, W, C) -> (B*nW, ws, ws, C)
            x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            # (B*nW, ws, ws, C) -> (B, H, W, C)
            x = window_unpartition(x, self.window_size, pad_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(self.ls1(x))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _arch_value(arch: str, name: str, override):
    return VIT_ARCHS[arch][name] if override is None else override


@MODELS.register_module()
class ViT(Backbone):
    """Plain ViT backbone (ViTDet; SAM's encoder; Segmenter's encoder with ``class_token``);
    ``arch`` picks a size, keywords override any part of it.

    Output: ``{'s16': (B, embed_dim, ceil(H / 16), ceil(W / 16))}`` for ``patch_size=16``.
    """

    def __init__(self, *, arch: str = 'base', embed_dim: int | None = None,
                 depth: int | None = None, num_heads: int | None = None,
                 global_attn_indexes: Sequence[int] | None = None,
                 drop_path_rate: float | None = None, img_size: int = 1024,
                 pretrain_img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, window_size: int = 14,
                 use_abs_pos: bool = True, use_rel_pos: bool = True, final_norm: bool = False,
                 class_token: bool = False, dist_token: bool = False,
                 layer_scale: float | None = None, pos_embed_interpolation: str = 'bicubic',
                 with_cp: bool = False,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
                 act_layer: Callable[[], nn.Module] = nn.GELU) -> None:
        """
        Args:
            arch: 'tiny', 'small', 'base', 'large' or 'huge'; sets embed_dim, depth, num_heads,
                global_attn_indexes and drop_path_rate unless given explicitly.
            embed_dim, depth, num_heads, global_attn_indexes, drop_path_rate: override ``arch``.
                ``global_attn_indexes`` lists the blocks (0-based) that attend globally.
            img_size: training input side; sizes the global blocks' relative position tables.
            pretrain_img_size: side the absolute position embedding was trained at (224 for
                ImageNet ViTs, 1024 for SAM); stored as a (1, side/patch, side/patch, C) grid.
            patch_size: patch side = output stride.
            in_chans: input channels.
            mlp_ratio: MLP hidden width / embed_dim.
            qkv_bias: bias on the query, key and value projections.
            window_size: attention window side for non-global blocks; 0 makes every block global.
            use_abs_pos: add the absolute position embedding.
            use_rel_pos: decomposed relative position bias in every block.
            final_norm: apply a norm after the last block (timm / DeiT / Segmenter style; ViTDet
                and SAM have none).
            class_token: prepend a learned class token (``cls_token``, with its own position
                embedding ``cls_pos_embed``) to the patch tokens, carry it through every block and
                the final norm, and drop it from the output, as Segmenter's encoder does. Needs
                global attention everywhere and no relative position bias.
            dist_token: with ``class_token``, a distillation token after it (DeiT-distilled
                Segmenter encoders).
            layer_scale: initial value of LayerScale on both residual branches of every block
                (``blocks.i.ls1.gamma`` / ``ls2.gamma``; DeiT-III, DINOv2); None for none.
            pos_embed_interpolation: how the stored position grid is resized to the input grid:
                'bicubic' (ViTDet, MAE) or 'bilinear' (Segmenter); also used when a checkpoint's
                grid is resized at load.
            with_cp: activation checkpointing of each block during training.
            norm_layer: builds a norm over the channel (last) dim.
            act_layer: MLP activation.
        """
        super().__init__()
        if arch not in VIT_ARCHS:
            raise ValueError(f'unknown ViT arch {arch!r}; choose one of {sorted(VIT_ARCHS)}')
        embed_dim = _arch_value(arch, 'embed_dim', embed_dim)
        depth = _arch_value(arch, 'depth', depth)
        num_heads = _arch_value(arch, 'num_heads', num_heads)
        global_attn_indexes = tuple(_arch_value(arch, 'global_attn_indexes',
                                                global_attn_indexes))
        drop_path_rate = _arch_value(arch, 'drop_path_rate', drop_path_rate)
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f'global_attn_indexes {bad} are outside the blocks 0..{depth - 1}')
        if img_size % patch_size or pretrain_img_size % patch_size:
            raise ValueError(f'img_size {img_size} and pretrain_img_size {pretrain_img_size} '
                             f'must be multiples of patch_size {patch_size}')
        if pos_embed_interpolation not in ('bicubic', 'bilinear'):
            raise ValueError(f"pos_embed_interpolation must be 'bicubic' or 'bilinear', got "
                             f'{pos_embed_interpolation!r}')
        if dist_token and not class_token:
            raise ValueError('dist_token=True needs class_token=True (the distillation token '
                             'follows the class token)')
        windowed_blocks = [i for i in range(depth)
                           if window_size > 0 and i not in global_attn_indexes]
        if class_token and (windowed_blocks or use_rel_pos):
            raise ValueError(f'class_token=True needs global attention in every block and no '
                             f'relative position bias; got windowed blocks {windowed_blocks} and '
                             f'use_rel_pos={use_rel_pos} (set window_size=0, use_rel_pos=False)')

        self.embed_dim = embed_dim
        self.depth = depth
        self.patch_size = patch_size
        self.window_size = window_size
        self.global_attn_indexes = global_attn_indexes
        self.with_cp = with_cp
        self.num_layers = depth
        self.out_name = f's{patch_size}'
        self.out_features = {self.out_name: FeatureSpec(embed_dim, patch_size)}
        self.final_norm = final_norm
        self.pos_embed_interpolation = pos_embed_interpolation
        self.num_prefix_tokens = int(class_token) + int(dist_token)

        self.patch_embed = PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, flatten=False, output_fmt='NHWC',
                                      strict_img_size=False, dynamic_img_pad=True)
        pretrain_grid = pretrain_img_size // patch_size
        self.pos_embed = (nn.Parameter(torch.zeros(1, pretrain_grid, pretrain_grid, embed_dim))
                          if use_abs_pos else None)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if dist_token else None
        self.cls_pos_embed = (nn.Parameter(torch.zeros(1, self.num_prefix_tokens, embed_dim))
                              if class_token and use_abs_pos else None)
        grid = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        blocks = []
        for i in range(depth):
            windowed = window_size > 0 and i not in global_attn_indexes
            blocks.append(Block(
                embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                drop_path=dpr[i], norm_layer=norm_layer, act_layer=act_layer,
                use_rel_pos=use_rel_pos, window_size=window_size if windowed else 0,
                rel_pos_size=(window_size, window_size) if windowed else (grid, grid),
                layer_scale=layer_scale))
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for table in (self.pos_embed, self.cls_token, self.dist_token, self.cls_pos_embed):
            if table is not None:  # Segmenter's init for the tokens
                trunc_normal_(table, std=0.02)
        # timm's ViT init: truncated-normal (std 0.02) linear weights, zero biases
        self.apply(partial(init_weights_vit_timm, needs_reset=False))

    def abs_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The absolute position embedding (1, H, W, C) for an (H, W) patch grid, resized from
        the stored pretraining grid with ``pos_embed_interpolation`` (returned as is when equal;
        no antialiasing, as detectron2's ``get_abs_pos`` and Segmenter's ``resize_pos_embed``)."""
        pos = self.pos_embed
        if tuple(pos.shape[1:3]) == tuple(grid):
            return pos
        # (1, Hp, Wp, C) -> (1, C, Hp, Wp) -> (1, C, H, W) -> (1, H, W, C)
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=tuple(grid),
                            mode=self.pos_embed_interpolation, align_corners=False)
        return pos.permute(0, 2, 3, 1)

    def _prefix_tokens(self, batch: int) -> torch.Tensor:
        """Class (and distillation) tokens with their position embedding, (B, P, C)."""
        tokens = self.cls_token if self.dist_token is None else torch.cat(
            [self.cls_token, self.dist_token], dim=1)
        if self.cls_pos_embed is not None:
            tokens = tokens + self.cls_pos_embed
        return tokens.expand(batch, -1, -1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # (B, 3, H, W) -> (B, H/16, W/16, C), padded up; the conv's NHWC view is made
        # contiguous once so the blocks' norms and linears do not copy it again
        x = self.patch_embed(images).contiguous()
        if self.pos_embed is not None:
            x = x + self.abs_pos(x.shape[1:3])
        b, h, w, c = x.shape
        prefix = self.num_prefix_tokens
        if prefix:
            # (B, H, W, C) -> (B, P + H*W, C): the class token first, as Segmenter
            x = torch.cat([self._prefix_tokens(b), x.reshape(b, h * w, c)], dim=1)
        for blk in self.blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.norm(x)
        if prefix:
            x = x[:, prefix:].reshape(b, h, w, c)  # (B, P + H*W, C) -> (B, H, W, C)
        # (B, H, W, C) -> (B, C, H, W)
        return {self.out_name: x.permute(0, 3, 1, 2).contiguous()}

    def layer_id(self, param_name: str) -> int:
        """0 for the patch and position embeddings and the class / distillation tokens, i + 1 for
        ``blocks.i``, depth + 1 otherwise."""
        if param_name.startswith(('patch_embed.', 'pos_embed', 'cls_token', 'dist_token',
                                  'cls_pos_embed')):
            return 0
        if param_name.startswith('blocks.'):
            return int(param_name.split('.')[1]) + 1
        return self.depth + 1

    def no_weight_decay(self) -> set[str]:
        names = {name for name in ('pos_embed', 'cls_token', 'dist_token', 'cls_pos_embed')
                 if getattr(self, name) is not None}
        for name, _ in self.named_parameters():
            if name.endswith(('rel_pos_h', 'rel_pos_w')):
                names.add(name)
        return names

    def checkpoint_ignored_keys(self) -> set[str]:
        """Without ``final_norm``, a pretraining checkpoint's final ``norm`` (MAE, timm), which
        ViTDet and SAM do not use either."""
        return set() if self.final_norm else {'norm.weight', 'norm.bias'}
