"""PromptableSegmenter: any backbone (+ neck) -> one image embedding -> SAM's prompt encoder and
mask decoder (segment-anything's own modules).

Call graph:

    image_embedding(inputs)                      backbone -> neck -> (B, C, h, w) at in_feature
    decode(embedding, point_coords, point_labels, boxes, mask_inputs, multimask_output)
      ├─ prompt_encoder(points, boxes, masks)    sparse (N, T, C), dense (N, C, h, w)
      └─ mask_decoder(embedding, dense_pe, ...)  low-res logits (N, M, 4h, 4w), IoU (N, M)
    postprocess_masks(low_res, input_size, original_size)   as segment-anything's Sam

The model's input is square, ``image_size`` on a side (SAM: 1024); ``SamDataPreprocessor``
resizes the longer side to it, normalises and pads. The embedding is the neck's ``in_feature``
map; its stride sets the grid (SAM: stride 16, 64 x 64), and the prompt encoder and the mask
decoder are built for its channels (SAM: 256). With SAM's image encoder (``ViT`` +
``SamNeck``) and weights converted by ``convert_sam``, this is segment-anything's ``Sam``;
with any other backbone the same decoder runs at that backbone's image size.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel

from ...checkpoint.loading import load_state_dict
from ...checkpoint.reading import read_state_dict
from ...registry import MODELS
from ..heads.sam import build_mask_decoder, build_prompt_encoder
from .neck_chain import apply_neck, build_neck

__all__ = ['PromptableSegmenter']

logger = logging.getLogger('densevit')


@MODELS.register_module()
class PromptableSegmenter(BaseModel):
    """Promptable mask prediction (SAM) on any backbone.

    Args:
        backbone: backbone config (MODELS).
        neck: a neck config, or a list applied in turn (e.g. ``SamNeck`` alone after a ViT, or
            after a Swin's s16 map); its ``in_feature`` map is the image embedding.
        in_feature: name of the embedding map (``'s16'`` for SAM).
        image_size: side of the square model input; a multiple of the embedding's stride.
        prompt_encoder: overrides of segment-anything's PromptEncoder settings
            (``densevit.models.heads.sam.PROMPT_ENCODER_DEFAULTS``).
        mask_decoder: overrides of its MaskDecoder / TwoWayTransformer settings
            (``MASK_DECODER_DEFAULTS``).
        data_preprocessor: default ``SamDataPreprocessor`` at ``image_size`` with SAM's pixel
            mean and std.
        train_cfg: training settings (prompt sampling, corrective clicks, loss weights).
        test_cfg: evaluation settings (which prompts are scored).
        backbone_checkpoint: path of a converted backbone state dict loaded at ``init_weights``.
        init_cfg: mmengine init config.
    """

    mask_threshold = 0.0  # a pixel is in the mask where its logit > 0, as segment-anything's Sam
    image_format = 'RGB'

    def __init__(self, *, backbone: dict, neck: dict | list[dict] | None = None,
                 in_feature: str = 's16', image_size: int = 1024,
                 prompt_encoder: dict | None = None, mask_decoder: dict | None = None,
                 data_preprocessor: dict | None = None, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, backbone_checkpoint: str | None = None,
                 init_cfg: dict | None = None) -> None:
        if data_preprocessor is None:
            data_preprocessor = dict(type='SamDataPreprocessor', image_size=image_size)
        super().__init__(data_preprocessor=MODELS.build(data_preprocessor), init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)
        self.neck, shapes, _ = build_neck(neck, self.backbone.out_features)
        if in_feature not in shapes:
            raise KeyError(f'in_feature {in_feature!r} is not among the maps the backbone and '
                           f'neck give: {sorted(shapes)}')
        spec = shapes[in_feature]
        if image_size % spec.stride:
            raise ValueError(f'image_size {image_size} is not a multiple of the stride '
                             f'{spec.stride} of {in_feature!r}')
        pre_size = getattr(self.data_preprocessor, 'image_size', image_size)
        if pre_size != image_size:
            raise ValueError(f'data_preprocessor image_size {pre_size} differs from the model\'s '
                             f'image_size {image_size}')
        self.in_feature = in_feature
        self.image_size = int(image_size)
        self.embedding_size = (image_size // spec.stride, image_size // spec.stride)
        self.prompt_encoder = build_prompt_encoder(prompt_encoder, embed_dim=spec.channels,
                                                   image_size=self.image_size,
                                                   embedding_size=self.embedding_size)
        self.mask_decoder = build_mask_decoder(mask_decoder, transformer_dim=spec.channels)
        self.train_cfg = dict(train_cfg or {})
        self.test_cfg = dict(test_cfg or {})
        self.backbone_checkpoint = backbone_checkpoint

    def init_weights(self) -> None:
        super().init_weights()
        if self.backbone_checkpoint is not None:
            logger.info('loading backbone_checkpoint %s', self.backbone_checkpoint)
            load_state_dict(self.backbone, read_state_dict(self.backbone_checkpoint))

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    # ---------------------------------------------------------------- the three stages
    def image_embedding(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) preprocessed images -> (B, C, h, w) embeddings."""
        return apply_neck(self.neck, self.backbone(inputs))[self.in_feature]

    def decode(self, image_embedding: torch.Tensor, *, point_coords: torch.Tensor | None = None,
               point_labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               mask_inputs: torch.Tensor | None = None, multimask_output: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """N prompts on one image's embedding, as segment-anything's ``predict_torch``.

        Args:
            image_embedding: (1, C, h, w) one image's embedding.
            point_coords: (N, P, 2) points (x, y) in model-input pixels, or None.
            point_labels: (N, P) 1 foreground, 0 background, -1 padding; with ``point_coords``.
            boxes: (N, 4) boxes (x1, y1, x2, y2) in model-input pixels, or None.
            mask_inputs: (N, 1, 4h, 4w) low-res logits of an earlier prediction, or None.
            multimask_output: three masks per prompt (the ambiguity-aware output), else one.

        Returns:
            (low-res mask logits (N, M, 4h, 4w), predicted IoUs (N, M)), M = 3 or 1.
        """
        if image_embedding.ndim != 4 or image_embedding.shape[0] != 1:
            raise ValueError(f'decode takes one image\'s embedding (1, C, h, w); got '
                             f'{tuple(image_embedding.shape)}')
        if (point_coords is None) != (point_labels is None):
            raise ValueError('point_coords and point_labels go together')
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        return self.mask_decoder(image_embeddings=image_embedding,
                                 image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse,
                                 dense_prompt_embeddings=dense,
                                 multimask_output=multimask_output)

    def postprocess_masks(self, masks: torch.Tensor, input_size: Sequence[int],
                          original_size: Sequence[int]) -> torch.Tensor:
        """(N, M, 4h, 4w) low-res logits -> (N, M, H, W) logits at ``original_size``: up to the
        square input, the padding cropped off (``input_size`` = the resized image), then to the
        original image."""
        masks = F.interpolate(masks, (self.image_size, self.image_size), mode='bilinear',
                              align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode='bilinear', align_corners=False)

    # ---------------------------------------------------------------- mmengine entry points
    def forward(self, inputs: torch.Tensor, data_samples: Sequence | None = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.image_embedding(inputs)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor'; got {mode!r}")

    def loss(self, inputs: torch.Tensor, data_samples: Sequence) -> Mapping[str, torch.Tensor]:
        raise NotImplementedError('PromptableSegmenter training lands with prompt sampling')

    def predict(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> list:
        raise NotImplementedError('PromptableSegmenter evaluation lands with PromptedIoUMetric')
