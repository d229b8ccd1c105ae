"""DETR (Carion et al., 2020): the plain set-prediction head over one feature map.

A 1x1 ``input_proj`` maps the feature to ``hidden_dim``; a post-norm transformer encoder attends
over all positions (sine position code added to queries and keys, padded keys masked); a decoder
turns ``num_queries`` learned query embeddings (added as positions, content starting at zero) into
one box and one (num_classes + 1)-way class distribution each, the last class meaning
"no object". Every decoder layer's output goes through the decoder's final LayerNorm and the
shared prediction heads: the last layer is the prediction, the earlier ones feed the auxiliary
losses.

Module and parameter names equal those of the official facebookresearch/detr checkpoints
(``detr-r50-e632da11.pth`` and friends), so converting one is dropping ``backbone.*`` and
prefixing the rest with the head's name:
    input_proj.{weight,bias}, query_embed.weight, class_embed.{weight,bias},
    bbox_embed.layers.{0,1,2}.{weight,bias},
    transformer.encoder.layers.{i}.self_attn.{in_proj_weight,in_proj_bias,out_proj.{weight,bias}},
    transformer.encoder.layers.{i}.{linear1,linear2,norm1,norm2}.{weight,bias},
    transformer.decoder.layers.{i}.{self_attn,multihead_attn}.(as above),
    transformer.decoder.layers.{i}.{linear1,linear2,norm1,norm2,norm3}.{weight,bias},
    transformer.decoder.norm.{weight,bias}.
The official model feeds the transformer sequence-first; here it is batch-first, which does not
change any parameter.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ....registry import MODELS
from ...contract import FeatureSpec
from ..base import select_inputs
from .criterion import build_set_criterion
from .position_encoding import resize_padding_mask, sine_position_embedding

__all__ = ['DETR', 'DETRTransformer', 'MLP']


class MLP(nn.Module):
    """Linear layers with ReLU between them, DETR's box head and Mask DINO's mask embedding.

    Our own rather than torchvision.ops.MLP, whose Sequential interleaves activation and dropout
    modules, so its parameter names would not match the official ``layers.{i}`` keys.

    Args:
        in_dim: input features.
        hidden_dim: features of the hidden layers.
        out_dim: output features.
        num_layers: number of Linear layers (>= 1).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f'MLP num_layers must be >= 1, got {num_layers}')
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: self-attention with q = k = src + pos, v = src, then FFN.

    Args:
        dim: model width.
        num_heads: attention heads.
        ffn_dim: hidden width of the feed-forward network.
        dropout: on attention weights, after attention and inside / after the FFN.
    """

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor,
                key_padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos: (B, N, D); key_padding_mask: (B, N) bool, True = padded. Returns (B, N, D)."""
        q = k = src + pos
        attn = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention among queries (q = k = tgt + query_pos), cross
    attention to the memory (query tgt + query_pos, key memory + pos, value memory), then FFN.

    Args: as TransformerEncoderLayer.
    """

    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout,
                                                    batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor, memory_padding_mask: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos: (B, Q, D); memory, pos: (B, N, D); memory_padding_mask: (B, N) bool.
        Returns (B, Q, D)."""
        q = k = tgt + query_pos
        attn = self.self_attn(q, k, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(attn))
        attn = self.multihead_attn(tgt + query_pos, memory + pos, memory,
                                   key_padding_mask=memory_padding_mask, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (post-norm, so no final norm)."""

    def __init__(self, layer: TransformerEncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor,
                key_padding_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src


class TransformerDecoder(nn.Module):
    """A stack of decoder layers whose outputs all pass through one final LayerNorm."""

    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                query_pos: torch.Tensor, memory_padding_mask: torch.Tensor) -> torch.Tensor:
        """Returns (L, B, Q, D): the normalised output of every layer."""
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_padding_mask)
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)


class DETRTransformer(nn.Module):
    """DETR's encoder-decoder transformer (post-norm, ReLU FFN).

    Args:
        dim: model width.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth.
        ffn_dim: hidden width of the feed-forward networks.
        dropout: dropout everywhere in the transformer.
    """

    def __init__(self, *, dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'DETRTransformer dim {dim} must divide by num_heads {num_heads}')
        layer_args = dict(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
        self.encoder = TransformerEncoder(TransformerEncoderLayer(**layer_args),
                                          num_encoder_layers)
        self.decoder = TransformerDecoder(TransformerDecoderLayer(**layer_args),
                                          num_decoder_layers, dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor, query_embed: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            src: (B, D, h, w) projected feature map.
            padding_mask: (B, h, w) bool, True = padded.
            query_embed: (Q, D) learned query positions.
            pos: (B, D, h, w) position code of the map.

        Returns:
            hs: (L, B, Q, D) normalised decoder output of every layer.
            memory: (B, h*w, D) encoder output.
        """
        bsz = src.shape[0]
        src = src.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        pos = pos.to(src.dtype).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        mask = padding_mask.flatten(1)  # (B, h, w) -> (B, h*w)
        query_pos = query_embed[None].expand(bsz, -1, -1)  # (Q, D) -> (B, Q, D)
        memory = self.encoder(src, pos, mask)
        hs = self.decoder(torch.zeros_like(query_pos), memory, pos, query_pos, mask)
        return hs, memory


_DETR_CRITERION = dict(
    type='SetCriterion', class_loss='ce', no_object_weight=0.1,
    weights=dict(cls=1.0, bbox=5.0, giou=2.0),
    matcher=dict(type='HungarianMatcher', class_cost='ce', cost_class=1.0, cost_bbox=5.0,
                 cost_giou=2.0))


@MODELS.register_module()
class DETR(nn.Module):
    """The DETR detection head (softmax classes with a no-object class, L1 + GIoU boxes).

    ``forward`` returns P: ``logits`` (B, Q, num_classes + 1), ``boxes`` (B, Q, 4) cxcywh in
    [0, 1] of the unpadded image, and ``aux``, the same for decoder layers 0..L-2.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (backbone or neck outputs).
        in_features: the one map consumed, e.g. ('s32',) of a ResNet or ('s16',) of a plain ViT.
        num_classes: object classes, without the no-object class.
        criterion: SetCriterion config; ``num_classes`` and ``class_loss='ce'`` are filled in when
            absent. The default is DETR's recipe: no-object weight 0.1, loss weights cls 1,
            bbox 5, giou 2, matcher costs 1 / 5 / 2.
        hidden_dim: transformer width (256 in DETR).
        num_queries: object queries (100 in DETR).
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth; L - 1 auxiliary predictions.
        ffn_dim: hidden width of the transformer FFNs.
        dropout: transformer dropout.
        pos_temperature: temperature of the sine position code.
    """

    class_loss = 'ce'
    with_masks = False

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s32',), num_classes: int,
                 criterion: dict = _DETR_CRITERION, hidden_dim: int = 256,
                 num_queries: int = 100, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.1,
                 pos_temperature: float = 10000.0) -> None:
        super().__init__()
        if len(in_features) != 1:
            raise ValueError(f'DETR consumes exactly one feature map; in_features is '
                             f'{tuple(in_features)}, choose one of {sorted(input_shapes)}')
        if hidden_dim % 4:
            raise ValueError(f'DETR hidden_dim must divide by 4 (sine code: sin / cos pairs for '
                             f'y and x), got {hidden_dim}')
        (spec,) = select_inputs(input_shapes, in_features, type(self).__name__)
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.pos_temperature = pos_temperature
        self.input_proj = nn.Conv2d(spec.channels, hidden_dim, kernel_size=1)
        self.transformer = DETRTransformer(
            dim=hidden_dim, num_heads=num_heads, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, ffn_dim=ffn_dim, dropout=dropout)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.criterion = build_set_criterion(criterion, num_classes=num_classes,
                                             class_loss='ce', owner='DETR')

    def forward(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
                targets: list[dict] | None = None) -> dict:
        """
        Args:
            features: name -> (B, C, h, w); ``in_features[0]`` is used.
            padding_mask: (B, Hp, Wp) bool at input resolution, True = padded pixel.
            targets: unused (DETR has no denoising queries); part of the head API.

        Returns:
            P: logits (B, Q, K + 1), boxes (B, Q, 4) and aux (list of L - 1 such dicts).
        """
        x = features[self.in_features[0]]
        mask = resize_padding_mask(padding_mask, x.shape[-2:])  # (B, h, w)
        pos = sine_position_embedding(mask, num_pos_feats=self.query_embed.embedding_dim // 2,
                                      temperature=self.pos_temperature)  # (B, D, h, w)
        hs, _ = self.transformer(self.input_proj(x), mask, self.query_embed.weight, pos)
        logits = self.class_embed(hs)  # (L, B, Q, K + 1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L, B, Q, 4)
        aux = [dict(logits=lg, boxes=bx) for lg, bx in zip(logits[:-1], boxes[:-1])]
        return dict(logits=logits[-1], boxes=boxes[-1], aux=aux)

    def loss(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
             targets: list[dict]) -> dict[str, torch.Tensor]:
        """Weighted losses: loss_cls, loss_bbox, loss_giou and d{i}.* for the earlier layers."""
        return self.criterion(self.forward(features, padding_mask, targets), targets)

    def predict(self, features: Mapping[str, torch.Tensor],
                padding_mask: torch.Tensor) -> dict:
        """The last decoder layer's logits (B, Q, K + 1) and boxes (B, Q, 4)."""
        outputs = self.forward(features, padding_mask)
        return dict(logits=outputs['logits'], boxes=outputs['boxes'])
