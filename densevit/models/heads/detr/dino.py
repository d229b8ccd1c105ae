"""DINO (Zhang et al., 2023): Deformable DETR with contrastive denoising, mixed query selection
and look-forward-twice box refinement; optionally Mask DINO's instance masks.

Forward, on maps already at ``hidden_dim`` (a ChannelMapper neck does the input projection):

1. Encoder: sine position code (DINO: temperature 20, no offset) of each level's resized padding
   mask plus ``level_embed``; deformable encoder layers (FFN 2048, dropout 0).
2. Mixed query selection: every valid token proposes a box (``encoder_output_proposals``;
   memory through ``enc_output`` + ``enc_output_norm``), scored by ``enc_out_class_embed`` /
   ``enc_out_bbox_embed``; the top-Q by their best class logit give the decoder's initial 4-d
   references (detached). The content queries are learned (``tgt_embed``), not the selected
   features. The selected, un-detached proposals are P['enc'] (the encoder / "interm" loss, with
   real labels).
3. Contrastive denoising (training, or whenever targets are passed): noised positive and
   negative copies of the targets (``make_denoising_queries`` with ``label_enc``, num_classes + 1
   rows as DINO's ``dn_labelbook_size + 1``) go before the matching queries, with an attention
   mask that hides the groups from each other and from the matching queries. Their outputs are
   split off into P['dn'] with the DenoisingMeta.
4. Decoder: the query position of each layer is ``ref_point_head`` of the sine code of its 4-d
   reference (scaled by the first level's valid ratio); every layer refines the boxes with the
   (by default shared) ``bbox_embed``. Look forward twice: a layer's box is its delta plus the
   previous layer's refined box *before* detaching, so the loss of layer l also trains layer
   l-1's box head; the reference the next layer attends with is detached. Hidden states of every
   layer go through the decoder's final ``norm`` before the class / box heads.
5. ``with_masks`` (Mask DINO): a MaskBranch fuses the finest encoder memory map with the s4
   feature into a stride-4 pixel embedding, and every decoder layer (matching and denoising
   queries alike) and the selected encoder proposals (after the decoder norm, as Mask DINO)
   predict mask logits from it.

Official state-dict keys (IDEA-Research/DINO), which are this head's keys:
    class_embed.{i}.{weight,bias}, bbox_embed.{i}.layers.{0,1,2}.{weight,bias}
        (one shared module per default: dec_pred_{class,bbox}_embed_share=True)
    label_enc.weight                                    (num_classes + 1, D)
    transformer.level_embed, transformer.tgt_embed.weight,
    transformer.{enc_output,enc_output_norm}.{weight,bias},
    transformer.enc_out_class_embed.{weight,bias}, transformer.enc_out_bbox_embed.layers.{0,1,2}.*
    transformer.encoder.layers.{n}.self_attn.{sampling_offsets,attention_weights,value_proj,
        output_proj}.*, transformer.encoder.layers.{n}.{norm1,linear1,linear2,norm2}.*
    transformer.decoder.layers.{n}.{cross_attn.*, self_attn.{in_proj_weight,in_proj_bias,
        out_proj.*}, norm1, norm2, norm3, linear1, linear2}
    transformer.decoder.norm.*, transformer.decoder.ref_point_head.layers.{0,1}.*
Not here: ``backbone.*``, ``input_proj.*`` (the ChannelMapper neck), and the official aliases
``transformer.decoder.{class,bbox}_embed.*`` (a converter drops them).
detrex's DINO names the same tensors differently (a converter renames):
``transformer.level_embeds``; encoder layers ``attentions.0`` (self_attn), ``norms.0/1``
(norm1/2), ``ffns.0.layers.0.0`` / ``ffns.0.layers.1`` (linear1/2); decoder layers
``attentions.0.attn`` (self_attn), ``attentions.1`` (cross_attn), ``norms.0/1/2``
(norm2/norm1/norm3), ``ffns.0...``; its ``class_embed`` / ``bbox_embed`` hold L + 1 unshared
modules, the last one being the encoder's (``enc_out_class_embed`` / ``enc_out_bbox_embed``
here), and its ``label_enc`` has num_classes rows (pad with one row). detrex's DINO configs also
use position temperature 10000 with offset -0.5 (``pos_temperature`` / ``pos_offset`` here).
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ....registry import MODELS
from ...contract import FeatureSpec
from .criterion import build_set_criterion
from .deformable_detr import PRIOR_PROB, check_pyramid_inputs
from .deformable_transformer import (DeformableDecoder, DeformableDecoderLayer,
                                     DeformableEncoder, DeformableEncoderLayer,
                                     encoder_output_proposals, flatten_levels, inverse_sigmoid,
                                     reset_transformer_parameters, unflatten_levels)
from .denoising import denoising_attention_mask, make_denoising_queries
from .detr import MLP
from .mask_branch import MaskBranch
from .position_encoding import resize_padding_mask, sine_position_embedding

__all__ = ['DINO', 'DINOTransformer']

# DINO's recipe: focal class loss weight 1, L1 5, GIoU 2; matcher costs 2 / 5 / 2
_DINO_CRITERION = dict(
    type='SetCriterion', weights=dict(cls=1.0, bbox=5.0, giou=2.0),
    matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=2.0, cost_bbox=5.0,
                 cost_giou=2.0))
# Mask DINO's: class 4, L1 5, GIoU 2, mask BCE 5, dice 5, as losses and as matching costs
_MASK_DINO_CRITERION = dict(
    type='SetCriterion', weights=dict(cls=4.0, bbox=5.0, giou=2.0, mask=5.0, dice=5.0),
    matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=4.0, cost_bbox=5.0,
                 cost_giou=2.0, cost_mask=5.0, cost_dice=5.0))


class DINOTransformer(nn.Module):
    """DINO's deformable encoder / decoder with mixed query selection.

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
        num_queries: matching queries Q (= proposals selected).
        enc_out_class_embed: scores the encoder proposals (B, S, D) -> (B, S, C).
        enc_out_bbox_embed: their box deltas (B, S, D) -> (B, S, 4).
        inverse_sigmoid_eps: clamp of ``inverse_sigmoid`` in the box refinement (1e-3 in DINO).
    """

    def __init__(self, *, embed_dim: int = 256, num_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, ffn_dim: int = 2048, dropout: float = 0.0,
                 activation: str = 'relu', num_levels: int = 4, enc_points: int = 4,
                 dec_points: int = 4, num_queries: int = 900, enc_out_class_embed: nn.Module,
                 enc_out_bbox_embed: nn.Module, inverse_sigmoid_eps: float = 1e-3) -> None:
        super().__init__()
        common = dict(embed_dim=embed_dim, ffn_dim=ffn_dim, dropout=dropout,
                      activation=activation, num_heads=num_heads, num_levels=num_levels)
        self.embed_dim = embed_dim
        self.num_queries = num_queries
        self.encoder = DeformableEncoder(layers=[
            DeformableEncoderLayer(**common, num_points=enc_points)
            for _ in range(num_encoder_layers)])
        self.decoder = DeformableDecoder(layers=[
            DeformableDecoderLayer(**common, num_points=dec_points)
            for _ in range(num_decoder_layers)], embed_dim=embed_dim, final_norm=True,
            query_pos_from_reference=True, inverse_sigmoid_eps=inverse_sigmoid_eps)
        self.level_embed = nn.Parameter(torch.empty(num_levels, embed_dim))
        self.tgt_embed = nn.Embedding(num_queries, embed_dim)
        self.enc_output = nn.Linear(embed_dim, embed_dim)
        self.enc_output_norm = nn.LayerNorm(embed_dim)
        # the official transformer Xavier-initialises before the heads attach their encoder
        # scorers, which keep the head's initialisation
        reset_transformer_parameters(self)
        nn.init.normal_(self.level_embed)
        self.enc_out_class_embed = enc_out_class_embed
        self.enc_out_bbox_embed = enc_out_bbox_embed

    def forward(self, maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                pos_embeds: Sequence[torch.Tensor],
                denoising: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                bbox_embed: Sequence[nn.Module]) -> dict:
        """
        Args:
            maps, pos_embeds: L tensors (B, D, H_l, W_l); masks: L bool (B, H_l, W_l).
            denoising: (label queries (B, Ndn, D), box queries (B, Ndn, 4) inverse-sigmoid,
                attention mask (Ndn + Q, Ndn + Q) bool) or None.
            bbox_embed: the head's per-layer box MLPs (iterative refinement).

        Returns:
            dict with hidden (L tensors (B, Ndn + Q, D), normed), references (L tensors
            (B, Ndn + Q, 4), sigmoid, what each layer's box delta is added to), memory (B, S, D),
            spatial_shapes (L (H, W) pairs), enc_hidden (B, Q, D) the selected proposals'
            features and enc_coords (B, Q, 4) their boxes in inverse-sigmoid space (both
            un-detached).
        """
        flat = flatten_levels(maps, masks, pos_embeds, self.level_embed)
        memory = self.encoder(flat.src, flat.pos, flat.spatial_shapes, flat.valid_ratios,
                              flat.mask)
        bsz = memory.shape[0]
        output_memory, proposals = encoder_output_proposals(memory, flat.mask,
                                                            flat.spatial_shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_logits = self.enc_out_class_embed(output_memory)  # (B, S, C)
        enc_coords = self.enc_out_bbox_embed(output_memory) + proposals  # (B, S, 4)
        if self.num_queries > enc_logits.shape[1]:
            raise ValueError(f'DINO selects num_queries={self.num_queries} proposals from only '
                             f'{enc_logits.shape[1]} encoder tokens')
        topk = torch.topk(enc_logits.max(-1)[0], self.num_queries, dim=1)[1]  # (B, Q)
        enc_coords = torch.gather(enc_coords, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        enc_hidden = torch.gather(output_memory, 1,
                                  topk.unsqueeze(-1).repeat(1, 1, self.embed_dim))
        reference = enc_coords.detach()  # (B, Q, 4) inverse-sigmoid
        tgt = self.tgt_embed.weight[None].repeat(bsz, 1, 1)  # (Q, D) -> (B, Q, D)
        attn_mask = None
        if denoising is not None:
            dn_labels, dn_boxes, attn_mask = denoising
            tgt = torch.cat([dn_labels, tgt], 1)
            reference = torch.cat([dn_boxes, reference], 1)
        hidden, references = self.decoder(
            tgt, reference.sigmoid(), memory, flat.spatial_shapes, flat.valid_ratios, flat.mask,
            self_attn_mask=attn_mask, bbox_embed=bbox_embed, look_forward_twice=True)
        return dict(hidden=hidden, references=references, memory=memory,
                    spatial_shapes=flat.spatial_shapes, enc_hidden=enc_hidden,
                    enc_coords=enc_coords)


@MODELS.register_module()
class DINO(nn.Module):
    """The DINO detection head (sigmoid focal classes, L1 + GIoU boxes, denoising), with optional
    Mask DINO instance masks.

    ``forward`` returns P: ``logits`` (B, Q, num_classes), ``boxes`` (B, Q, 4) cxcywh in [0, 1]
    of the unpadded image, ``aux`` (decoder layers 0..L-2), ``enc`` (the Q selected encoder
    proposals) and, when targets are given, ``dn`` (logits, boxes, aux, meta of the Ndn
    denoising queries); with masks, ``masks`` (B, Q, Hp/4, Wp/4) in each of them.

    Args:
        input_shapes: name -> FeatureSpec of what feeds the head (a ChannelMapper neck; plus the
            stride-4 map for masks).
        in_features: the pyramid consumed, fine to coarse, each ``hidden_dim`` wide (4 scales:
            s8..s64; 5 scales: s4..s64).
        num_classes: object classes.
        criterion: SetCriterion config; ``num_classes`` and ``class_loss='focal'`` are filled in.
            None: DINO's recipe (weights cls 1, bbox 5, giou 2; matcher costs 2 / 5 / 2;
            encoder loss with real labels) or, with masks, Mask DINO's (cls 4, bbox 5, giou 2,
            mask 5, dice 5, the same as matching costs).
        hidden_dim: D (256).
        num_heads: attention heads (8).
        num_encoder_layers: encoder depth (6).
        num_decoder_layers: decoder depth L (6).
        ffn_dim: FFN width (2048).
        dropout: transformer dropout (0.0).
        activation: FFN activation ('relu').
        num_queries: matching queries Q (900).
        enc_points: sampling points per head and level in the encoder (4).
        dec_points: the same in the decoder (4).
        share_pred_layers: one class / box head for all decoder layers (DINO's
            dec_pred_{class,bbox}_embed_share=True); False gives each layer its own copy.
        num_dn: denoising queries aimed at per image (100); 0 disables denoising.
        dn_label_noise_ratio: label noise of the denoising queries (0.5).
        dn_box_noise_scale: box noise of the denoising queries (0.4 in DINO's configs).
        pos_temperature: temperature of the sine position code (20).
        pos_offset: offset of the sine position code before normalising (0).
        inverse_sigmoid_eps: clamp of ``inverse_sigmoid`` wherever a box delta is added to a
            reference (1e-3 as DINO and detrex; Mask DINO uses 1e-5).
        with_masks: predict instance masks with a MaskBranch (Mask DINO).
        mask_in_features: the stride-4 map the MaskBranch fuses (('s4',)).
        mask_dim: channels of the pixel / mask embedding (256).
    """

    class_loss = 'focal'

    def __init__(self, *, input_shapes: Mapping[str, FeatureSpec],
                 in_features: Sequence[str] = ('s8', 's16', 's32', 's64'), num_classes: int,
                 criterion: dict | None = None, hidden_dim: int = 256, num_heads: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, ffn_dim: int = 2048,
                 dropout: float = 0.0, activation: str = 'relu', num_queries: int = 900,
                 enc_points: int = 4, dec_points: int = 4, share_pred_layers: bool = True,
                 num_dn: int = 100, dn_label_noise_ratio: float = 0.5,
                 dn_box_noise_scale: float = 0.4, pos_temperature: float = 20.0,
                 pos_offset: float = 0.0, inverse_sigmoid_eps: float = 1e-3,
                 with_masks: bool = False,
                 mask_in_features: Sequence[str] = ('s4',), mask_dim: int = 256) -> None:
        super().__init__()
        owner = type(self).__name__
        check_pyramid_inputs(input_shapes, in_features, hidden_dim, owner)
        if num_dn < 0:
            raise ValueError(f'{owner} num_dn must be >= 0 (0 disables denoising), got {num_dn}')
        self.in_features = tuple(in_features)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.num_dn = num_dn
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_box_noise_scale = dn_box_noise_scale
        self.pos_temperature = pos_temperature
        self.pos_offset = pos_offset
        self.inverse_sigmoid_eps = inverse_sigmoid_eps
        self.with_masks = with_masks

        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        self.transformer = DINOTransformer(
            embed_dim=hidden_dim, num_heads=num_heads, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, ffn_dim=ffn_dim, dropout=dropout,
            activation=activation, num_levels=len(self.in_features), enc_points=enc_points,
            dec_points=dec_points, num_queries=num_queries,
            enc_out_class_embed=copy.deepcopy(class_embed),
            enc_out_bbox_embed=copy.deepcopy(bbox_embed), inverse_sigmoid_eps=inverse_sigmoid_eps)
        if share_pred_layers:
            self.class_embed = nn.ModuleList(class_embed for _ in range(num_decoder_layers))
            self.bbox_embed = nn.ModuleList(bbox_embed for _ in range(num_decoder_layers))
        else:
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed)
                                             for _ in range(num_decoder_layers))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed)
                                            for _ in range(num_decoder_layers))
        self.label_enc = nn.Embedding(num_classes + 1, hidden_dim)
        self.mask_branch = (MaskBranch(input_shapes=input_shapes, in_features=mask_in_features,
                                       hidden_dim=hidden_dim, mask_dim=mask_dim)
                            if with_masks else None)
        if criterion is None:
            criterion = _MASK_DINO_CRITERION if with_masks else _DINO_CRITERION
        self.criterion = build_set_criterion(criterion, num_classes=num_classes,
                                             class_loss='focal', owner=owner)

    def forward(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
                targets: list[dict] | None = None) -> dict:
        """
        Args:
            features: name -> (B, C, h, w); ``in_features`` (and ``mask_in_features``) are used.
            padding_mask: (B, Hp, Wp) bool at input resolution, True = padded pixel.
            targets: per image labels (N_i,) and boxes (N_i, 4) cxcywh; when given (and num_dn
                > 0) denoising queries are added, whatever the train / eval mode.

        Returns:
            P: logits (B, Q, C), boxes (B, Q, 4)[, masks (B, Q, Hp/4, Wp/4)], aux (L - 1 such
            dicts), enc (such a dict for the Q selected proposals) and, with denoising, dn
            (logits (B, Ndn, C), boxes[, masks], aux, meta).
        """
        return self._forward(features, padding_mask, targets, all_layers=True)

    def _forward(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
                 targets: list[dict] | None, all_layers: bool) -> dict:
        maps = [features[name] for name in self.in_features]
        masks = [resize_padding_mask(padding_mask, m.shape[-2:]) for m in maps]
        pos = [sine_position_embedding(m, num_pos_feats=self.hidden_dim // 2,
                                       temperature=self.pos_temperature, offset=self.pos_offset
                                       ).to(maps[0].dtype) for m in masks]
        denoising, meta = None, None
        if targets is not None and self.num_dn > 0:
            made = make_denoising_queries(
                targets, label_embedding=self.label_enc, num_classes=self.num_classes,
                num_dn=self.num_dn, label_noise_ratio=self.dn_label_noise_ratio,
                box_noise_scale=self.dn_box_noise_scale)
            if made is not None:
                dn_labels, dn_boxes, meta = made
                attn_mask = denoising_attention_mask(meta, self.num_queries, maps[0].device)
                denoising = (dn_labels.to(maps[0].dtype), dn_boxes, attn_mask)
        out = self.transformer(maps, masks, pos, denoising, self.bbox_embed)
        hidden = list(out['hidden'])
        # keeps label_enc in the graph when no image has a target (DDP needs every parameter)
        hidden[0] = hidden[0] + 0.0 * self.label_enc.weight[0, 0]

        pixel_embed = None
        if self.mask_branch is not None:
            memory_maps = unflatten_levels(out['memory'], out['spatial_shapes'])
            pixel_embed = self.mask_branch.pixel_embedding(features, memory_maps)
        num_layers = len(hidden)
        layers = []
        for lid in range(num_layers) if all_layers else [num_layers - 1]:
            reference = inverse_sigmoid(out['references'][lid], self.inverse_sigmoid_eps)
            coords = self.bbox_embed[lid](hidden[lid]) + reference
            layer = dict(logits=self.class_embed[lid](hidden[lid]), boxes=coords.sigmoid())
            if pixel_embed is not None:
                layer['masks'] = self.mask_branch.predict_masks(hidden[lid], pixel_embed)
            layers.append(layer)

        num_dn = meta.num_dn_queries if meta is not None else 0
        matching = [{k: v[:, num_dn:] for k, v in layer.items()} for layer in layers]
        outputs = dict(matching[-1], aux=matching[:-1])
        enc = dict(logits=self.transformer.enc_out_class_embed(out['enc_hidden']),
                   boxes=out['enc_coords'].sigmoid())
        if pixel_embed is not None and all_layers:
            enc['masks'] = self.mask_branch.predict_masks(
                self.transformer.decoder.norm(out['enc_hidden']), pixel_embed)
        outputs['enc'] = enc
        if meta is not None:
            dn = [{k: v[:, :num_dn] for k, v in layer.items()} for layer in layers]
            outputs['dn'] = dict(dn[-1], aux=dn[:-1], meta=meta)
        return outputs

    def loss(self, features: Mapping[str, torch.Tensor], padding_mask: torch.Tensor,
             targets: list[dict]) -> dict[str, torch.Tensor]:
        """Weighted losses: loss_cls, loss_bbox, loss_giou[, loss_mask, loss_dice], d{i}.*,
        enc.* and dn.* / dn.d{i}.*."""
        return self.criterion(self.forward(features, padding_mask, targets), targets)

    def predict(self, features: Mapping[str, torch.Tensor],
                padding_mask: torch.Tensor) -> dict:
        """The last decoder layer's logits (B, Q, C), boxes (B, Q, 4)[, masks (B, Q, Hp/4,
        Wp/4)] (only the last layer's masks are computed)."""
        outputs = self._forward(features, padding_mask, None, all_layers=False)
        return {k: v for k, v in outputs.items() if k in ('logits', 'boxes', 'masks')}
