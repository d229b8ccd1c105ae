"""Deformable DETR (Zhu et al., 2021): the set-prediction head over a multi-scale pyramid with
deformable attention, optional iterative box refinement and two-stage proposals.

The head consumes maps already at ``hidden_dim`` (the input projection, 1x1 conv + GN per level
and a 3x3 stride-2 conv for the extra coarsest level, is the ``ChannelMapper`` neck). It adds the
sine position code (Deformable DETR's variant: counts offset by -0.5 before normalising) of each
level's resized padding mask and a learned level embedding, runs the deformable encoder and
decoder (``deformable_transformer``) and predicts focal-sigmoid class logits and cxcywh boxes
from every decoder layer.

- Single stage: ``query_embed`` (Q, 2D) splits into query position and content; the initial 2-d
  reference points are ``transformer.reference_points(query_pos).sigmoid()``.
- ``with_box_refine``: each decoder layer has its own ``class_embed`` / ``bbox_embed`` and
  refines the reference boxes of the next layer (detached).
- ``two_stage``: every encoder token proposes a box (``encoder_output_proposals``; memory through
  ``enc_output`` + ``enc_output_norm``) scored by the extra ``class_embed[L]`` / ``bbox_embed[L]``;
  the top-Q by the first class logit (the official choice: the encoder loss is class-agnostic,
  so the criterion's ``enc_class_agnostic`` defaults to True) become the decoder's 4-d
  references, and ``pos_trans`` + ``pos_trans_norm`` of their sine code give query position and
  content.
  P then carries ``enc``: logits (B, S, C) and boxes (B, S, 4) of all S tokens (invalid tokens
  have boxes at 1, as the official +inf logits give).

Official state-dict keys (fundamentalvision/Deformable-DETR), which are this head's keys:
    query_embed.weight                                  (single stage only)
    class_embed.{i}.{weight,bias}, bbox_embed.{i}.layers.{0,1,2}.{weight,bias}
        (i < L, or L + 1 with two_stage; shared modules repeat their keys without refinement)
    transformer.level_embed
    transformer.reference_points.{weight,bias}          (single stage only)
    transformer.{enc_output,enc_output_norm,pos_trans,pos_trans_norm}.{weight,bias} (two stage)
    transformer.encoder.layers.{n}.self_attn.{sampling_offsets,attention_weights,value_proj,
        output_proj}.{weight,bias}, transformer.encoder.layers.{n}.{norm1,linear1,linear2,norm2}.*
    transformer.decoder.layers.{n}.cross_attn.(as self_attn above),
    transformer.decoder.layers.{n}.self_attn.{in_proj_weight,in_proj_bias,out_proj.weight,
        out_proj.bias}, transformer.decoder.layers.{n}.{norm1,norm2,norm3,linear1,linear2}.*
Not here: ``backbone.*`` and ``input_proj.{l}.{0,1}`` (conv, GroupNorm) belong to the backbone and
the ChannelMapper neck; ``transformer.decoder.bbox_embed.*`` / ``transformer.decoder.class_embed.*``
are the official code's aliases of the head's modules and are dropped by a converter.
transformers' ``DeformableDetrForObjectDetection`` names the same tensors ``model.level_embed``,
``model.query_position_embeddings``, ``model.{reference_points,enc_output,...}``,
``model.encoder.layers.{n}.{self_attn, self_attn_layer_norm (norm1), fc1, fc2,
final_layer_norm (norm2)}``, ``model.decoder.layers.{n}.{self_attn.{q,k,v,out}_proj (concatenated
into in_proj), self_attn_layer_norm (norm2), encoder_attn (cross_attn), encoder_attn_layer_norm
(norm1), fc1, fc2, final_layer_norm (norm3)}``, and ``class_embed`` / ``bbox_embed`` as here.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ....registry import MODELS
from ...contract import FeatureSpec
from ..base import select_inputs
from .deformable_transformer import (DeformableDecoder, DeformableDecoderLayer,
                                     DeformableEncoder, DeformableEncoderLayer,
                                     encoder_output_proposals, flatten_levels, inverse_sigmoid,
                                     reset_transformer_parameters)
from .criterion import build_set_criterion
from .detr import MLP
from .position_encoding import (coordinate_sine_embedding, resize_padding_mask,
                                sine_position_embedding)

__all__ = ['DeformableDETR', 'DeformableDETRTransformer', 'check_pyramid_inputs']

PRIOR_PROB = 0.01
# the published recipe: focal class loss weight 2, L1 5, GIoU 2; matcher costs 2 / 5 / 2
_DEFORMABLE_DETR_CRITERION = dict(
    type='SetCriterion', weights=dict(cls=2.0, bbox=5.0, giou=2.0),
    matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=2.0, cost_bbox=5.0,
                 cost_giou=2.0))


def check_pyramid_inputs(input_shapes: Mapping[str, FeatureSpec], in_features: Sequence[str],
                         hidden_dim: int, owner: str) -> None:
    """The maps a deformable head consumes: present, fine to coarse, already ``hidden_dim`` wide
    (the ChannelMapper neck projects them)."""
    specs = select_inputs(input_shapes, in_features, owner)
    strides = [s.stride for s in specs]
    if any(coarser <= finer for finer, coarser in zip(strides, strides[1:])):
        raise ValueError(f'{owner} in_features {tuple(in_features)} must go from fine to coarse; '
                         f'their strides are {strides}')
    wrong = {name: s.channels for name, s in zip(in_features, specs) if s.channels != hidden_dim}
    if wrong:
        raise ValueError(f'{owner} takes maps of hidden_dim={hidden_dim} channels, got {wrong}; '
                         f'project them with a ChannelMapper neck (out_channels={hidden_dim})')
    if hidden_dim % 4:
        raise ValueError(f'{owner} hidden_dim must divide by 4 (sine codes of x and y), '
                         f'got {hidden_dim}')


class DeformableDETRTransformer(nn.Module):
    """Deformable DETR's encoder, decoder, level embedding and query initialisation.

    Args:
        embed_dim: D.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth L.
        ffn_dim: FFN width.
        dropout: dropout everywhere in the transformer.
        activation: FFN activation, 'relu' or 'gelu'.
        num_levels: pyramid levels.
        enc_points: sampling points per head and level in the encoder.
        dec_points: the same in the decoder.
        two_stage: build the two-stage proposal modules instead of ``reference_points``.
        num_proposals: decoder queries taken from the proposals (two stage).
    """

    def __init__(self, *, embed_dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 1024, dropout: float = 0.1,
                 activation: str = 'relu', num_levels: int = 4, enc_points: int = 4,
                 dec_points: int = 4, two_stage: bool = False, num_proposals: int = 300) -> None:
        super().__init__()
        common = dict(embed_dim=embed_dim, ffn_dim=ffn_dim, dropout=dropout,
                      activation=activation, num_heads=num_heads, num_levels=num_levels)
        self.embed_dim = embed_dim
        self.two_stage = two_stage
        self.num_proposals = num_proposals
        self.encoder = DeformableEncoder(layers=[
            DeformableEncoderLayer(**common, num_points=enc_points)
            for _ in range(num_encoder_layers)])
        self.decoder = DeformableDecoder(layers=[
            DeformableDecoderLayer(**common, num_points=dec_points)
            for _ in range(num_decoder_layers)], embed_dim=embed_dim)
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dim))
        if two_stage:
            self.enc_output = nn.Linear(embed_dim, embed_dim)
            self.enc_output_norm = nn.LayerNorm(embed_dim)
            self.pos_trans = nn.Linear(embed_dim * 2, embed_dim * 2)
            self.pos_trans_norm = nn.LayerNorm(embed_dim * 2)
        else:
            self.reference_points = nn.Linear(embed_dim, 2)
        reset_transformer_parameters(self)
        if not two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                pos_embeds: Sequence[torch.Tensor], query_embed: Optional[torch.Tensor],
                class_embed: Sequence[nn.Module], bbox_embed: Sequence[nn.Module],
                refine: bool) -> dict:
        """
        Args:
            maps, pos_embeds: L tensors (B, D, H_l, W_l); masks: L bool (B, H_l, W_l).
            query_embed: (Q, 2D) learned queries (single stage) or None (two stage).
            class_embed, bbox_embed: the head's prediction modules; with two_stage their entry L
                scores the proposals.
            refine: pass ``bbox_embed`` to the decoder for iterative box refinement.

        Returns:
            dict with hidden (L tensors (B, Q, D)), references (L tensors (B, Q, 2 or 4), what each
            layer's box delta is added to) and, two stage, enc_logits (B, S, C) and
            enc_coords (B, S, 4) in inverse-sigmoid space.
        """
        flat = flatten_levels(maps, masks, pos_embeds, self.level_embed)
        memory = self.encoder(flat.src, flat.pos, flat.spatial_shapes, flat.valid_ratios,
                              flat.mask)
        bsz, dim = memory.shape[0], self.embed_dim
        out = {}
        if self.two_stage:
            output_memory, proposals = encoder_output_proposals(memory, flat.mask,
                                                                flat.spatial_shapes)
            output_memory = self.enc_output_norm(self.enc_output(output_memory))
            num_layers = self.decoder.num_layers
            enc_logits = class_embed[num_layers](output_memory)  # (B, S, C)
            enc_coords = bbox_embed[num_layers](output_memory) + proposals  # (B, S, 4)
            if self.num_proposals > enc_logits.shape[1]:
                raise ValueError(f'two-stage Deformable DETR selects {self.num_proposals} '
                                 f'proposals from only {enc_logits.shape[1]} encoder tokens')
            topk = torch.topk(enc_logits[..., 0], self.num_proposals, dim=1)[1]  # (B, Q)
            topk_coords = torch.gather(enc_coords, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
            topk_coords = topk_coords.detach()
            reference = topk_coords.sigmoid()
            sine = coordinate_sine_embedding(topk_coords.sigmoid(), num_pos_feats=dim // 2,
                                             swap_xy=False).to(memory.dtype)  # (B, Q, 2D)
            query_pos, tgt = torch.split(self.pos_trans_norm(self.pos_trans(sine)), dim, dim=2)
            out.update(enc_logits=enc_logits, enc_coords=enc_coords)
        else:
            if query_embed is None:
                raise ValueError('single-stage Deformable DETR needs query_embed')
            query_pos, tgt = torch.split(query_embed, dim, dim=1)  # (Q, 2D) -> 2 x (Q, D)
            query_pos = query_pos.unsqueeze(0).expand(bsz, -1, -1)
            tgt = tgt.unsqueeze(0).expand(bsz, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        hidden, references = self.decoder(
            tgt, reference, memory, flat.spatial_shapes, flat.valid_ratios, flat.mask,
            query_pos=query_pos, bbox_embed=bbox_embed if refine else None)
        out.update(hidden=hidden, references=references)
        return out


@MODELS.register_module()
class DeformableDETR(nn.Module):
    """The Deformable DETR detection head (sigmoid focal classes, L1 + GIoU boxes).

    ``forward`` returns P: ``logits`` (B, Q, num_classes), ``boxes`` (B, Q, 4) cxcywh in [0, 1]
    of the unpadded image, ``aux`` (decoder layers 0..L-2) and, with two_stage, ``enc``.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (a ChannelMapper neck).
        in_features: the pyramid consumed, fine to coarse, each ``hidden_dim`` wide.
        num_classes: object classes.
        criterion: SetCriterion config; ``num_classes``, ``class_loss='focal'`` and
            ``enc_class_agnostic=two_stage`` (the official class-agnostic encoder loss) are
            filled in where absent. The default is the published recipe: weights cls 2, bbox 5,
            giou 2; matcher costs 2 / 5 / 2.
        hidden_dim: D (256).
        num_heads: attention heads (8).
        num_encoder_layers: encoder depth (6).
        num_decoder_layers: decoder depth L (6).
        ffn_dim: FFN width (1024).
        dropout: transformer dropout (0.1).
        activation: FFN activation ('relu').
        num_queries: Q (300).
        enc_points: sampling points per head and level in the encoder (4).
        dec_points: the same in the decoder (4).
        with_box_refine: iterative bounding-box refinement.
        two_stage: queries from encoder proposals.
        pos_temperature: temperature of the sine position code (10000).
    """

    class_loss = 'focal'
    with_masks = False

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s8', 's16', 's32', 's64'), num_classes: int,
                 criterion: dict = _DEFORMABLE_DETR_CRITERION, hidden_dim: int = 256,
                 num_heads: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 ffn_dim: int = 1024,
                 dropout: float = 0.1, activation: str = 'relu', num_queries: int = 300,
                 enc_points: int = 4, dec_points: int = 4, with_box_refine: bool = False,
                 two_stage: bool = False, pos_temperature: float = 10000.0) -> None:
        super().__init__()
        owner = type(self).__name__
        check_pyramid_inputs(input_shapes, in_features, hidden_dim, owner)
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.pos_temperature = pos_temperature
        self.transformer = DeformableDETRTransformer(
            embed_dim=hidden_dim, num_heads=num_heads, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, ffn_dim=ffn_dim, dropout=dropout,
            activation=activation, num_levels=len(self.in_features), enc_points=enc_points,
            dec_points=dec_points, two_stage=two_stage, num_proposals=num_queries)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, hidden_dim * 2)
        self.class_embed, self.bbox_embed = self._prediction_heads(num_decoder_layers)
        self.criterion = build_set_criterion(criterion, num_classes=num_classes,
                                             class_loss='focal', owner=owner,
                                             enc_class_agnostic=two_stage)

    def _prediction_heads(self, num_layers: int) -> tuple[nn.ModuleList, nn.ModuleList]:
        """One class / box head per decoder layer (+1 for the proposals when two-stage): copies
        with box refinement, one shared module otherwise; the published initialisation."""
        class_embed = nn.Linear(self.hidden_dim, self.num_classes)
        bbox_embed = MLP(self.hidden_dim, self.hidden_dim, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        num_pred = num_layers + 1 if self.two_stage else num_layers
        if self.with_box_refine:
            class_embeds = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            bbox_embeds = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            # boxes start small (sigmoid(-2) = 0.12 of the image) for the first layer only
            nn.init.constant_(bbox_embeds[0].layers[-1].bias[2:], -2.0)
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            class_embeds = nn.ModuleList(class_embed for _ in range(num_pred))
            bbox_embeds = nn.ModuleList(bbox_embed for _ in range(num_pred))
        if self.two_stage:  # proposals already carry a size
            for embed in bbox_embeds:
                nn.init.zeros_(embed.layers[-1].bias[2:])
        return class_embeds, bbox_embeds

    def forward(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
                targets: list[dict] | None = None) -> dict:
        """
        Args:
            features: name -> (B, hidden_dim, h, w); ``in_features`` are used.
            padding_mask: (B, Hp, Wp) bool at input resolution, True = padded pixel.
            targets: unused (no denoising queries); part of the head API.

        Returns:
            P: logits (B, Q, C), boxes (B, Q, 4), aux (L - 1 such dicts) and, two stage, enc
            (logits (B, S, C), boxes (B, S, 4) over all S encoder tokens).
        """
        maps = [features[name] for name in self.in_features]
        masks = [resize_padding_mask(padding_mask, m.shape[-2:]) for m in maps]
        pos = [sine_position_embedding(m, num_pos_feats=self.hidden_dim // 2,
                                       temperature=self.pos_temperature, offset=-0.5
                                       ).to(maps[0].dtype) for m in masks]
        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(maps, masks, pos, query_embed, self.class_embed, self.bbox_embed,
                               refine=self.with_box_refine)
        layers = []
        for lid, (hidden, reference) in enumerate(zip(out['hidden'], out['references'])):
            reference = inverse_sigmoid(reference)
            delta = self.bbox_embed[lid](hidden)
            if reference.shape[-1] == 4:
                coords = delta + reference
            else:  # 2-d reference points: the delta's centre is relative to them
                coords = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            layers.append(dict(logits=self.class_embed[lid](hidden), boxes=coords.sigmoid()))
        outputs = dict(layers[-1], aux=layers[:-1])
        if self.two_stage:
            outputs['enc'] = dict(logits=out['enc_logits'], boxes=out['enc_coords'].sigmoid())
        return outputs

    def loss(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
             targets: list[dict]) -> dict[str, torch.Tensor]:
        """Weighted losses: loss_cls, loss_bbox, loss_giou, d{i}.* and, two stage, enc.*."""
        return self.criterion(self.forward(features, padding_mask, targets), targets)

    def predict(self, features: Mapping[str, torch.Tensor],
                padding_mask: torch.Tensor) -> dict:
        """The last decoder layer's logits (B, Q, C) and boxes (B, Q, 4)."""
        outputs = self.forward(features, padding_mask)
        return dict(logits=outputs['logits'], boxes=outputs['boxes'])
