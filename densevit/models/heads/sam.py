"""SAM's prompt encoder and mask decoder, built from segment-anything's own modules.

densevit does not rewrite them: ``PromptEncoder``, ``MaskDecoder`` and ``TwoWayTransformer`` come
from the ``segment_anything`` package, so official weights load under their own key names and
behave exactly as there. These builders only check the settings and fill in the geometry that
follows from the image encoder (embedding channels, image size, embedding grid).
"""
from __future__ import annotations

from typing import Mapping

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

__all__ = ['build_prompt_encoder', 'build_mask_decoder', 'PROMPT_ENCODER_DEFAULTS',
           'MASK_DECODER_DEFAULTS']

# segment-anything's _build_sam settings (identical for vit_b, vit_l and vit_h)
PROMPT_ENCODER_DEFAULTS = dict(mask_in_chans=16)
MASK_DECODER_DEFAULTS = dict(num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
                             transformer_depth=2, transformer_mlp_dim=2048,
                             transformer_num_heads=8)


def _settings(kind: str, cfg: Mapping | None, defaults: Mapping) -> dict:
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(defaults)
    if unknown:
        raise KeyError(f'{kind} has no settings {sorted(unknown)}; allowed: {sorted(defaults)}')
    return {**defaults, **cfg}


def build_prompt_encoder(cfg: Mapping | None, *, embed_dim: int, image_size: int,
                         embedding_size: tuple[int, int]) -> PromptEncoder:
    """segment-anything's ``PromptEncoder`` for an image encoder with ``embed_dim`` channels on an
    ``embedding_size`` (h, w) grid of a square ``image_size`` input.

    Args:
        cfg: overrides of ``PROMPT_ENCODER_DEFAULTS`` (``mask_in_chans``); None for SAM's.
    """
    settings = _settings('prompt_encoder', cfg, PROMPT_ENCODER_DEFAULTS)
    return PromptEncoder(embed_dim=embed_dim, image_embedding_size=tuple(embedding_size),
                         input_image_size=(image_size, image_size),
                         mask_in_chans=settings['mask_in_chans'])


def build_mask_decoder(cfg: Mapping | None, *, transformer_dim: int) -> MaskDecoder:
    """segment-anything's ``MaskDecoder`` with a ``TwoWayTransformer`` of ``transformer_dim``
    channels (the image embedding's).

    Args:
        cfg: overrides of ``MASK_DECODER_DEFAULTS``; None for SAM's.
    """
    s = _settings('mask_decoder', cfg, MASK_DECODER_DEFAULTS)
    if transformer_dim % s['transformer_num_heads']:
        raise ValueError(f'mask_decoder transformer_num_heads={s["transformer_num_heads"]} must '
                         f'divide the embedding channels {transformer_dim}')
    transformer = TwoWayTransformer(depth=s['transformer_depth'], embedding_dim=transformer_dim,
                                    mlp_dim=s['transformer_mlp_dim'],
                                    num_heads=s['transformer_num_heads'])
    return MaskDecoder(transformer_dim=transformer_dim, transformer=transformer,
                       num_multimask_outputs=s['num_multimask_outputs'],
                       iou_head_depth=s['iou_head_depth'],
                       iou_head_hidden_dim=s['iou_head_hidden_dim'])
