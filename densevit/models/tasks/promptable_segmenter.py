"""PromptableSegmenter: any backbone (+ neck) -> one image embedding -> SAM's prompt encoder and
mask decoder (segment-anything's own modules), trained and scored with prompts drawn from the
ground truth.

Call graph:

    image_embedding(inputs)                      backbone -> neck -> (B, C, h, w) at in_feature
    decode(embedding, point_coords, point_labels, boxes, mask_inputs, multimask_output)
      ├─ prompt_encoder(points, boxes, masks)    sparse (N, T, C), dense (N, C, h, w)
      └─ mask_decoder(embedding, dense_pe, ...)  low-res logits (N, M, 4h, 4w), IoU (N, M)
    postprocess_masks(low_res, input_size, original_size)   as segment-anything's Sam

    loss(inputs, data_samples)                   mode='loss'
      ├─ image_embedding (under no_grad when the image encoder is frozen)
      ├─ per image: _training_masks(sample)     gt masks in the input frame, empty ones skipped
      │    └─ per first-prompt kind (point / box): _interactive_loss
      │         ├─ decode(first prompt, multimask) -> _mask_losses on the lowest-loss output
      │         └─ refinement_schedule(num_clicks, refine_iterations) steps, each
      │              previous logits (+ random_error_clicks on a click step) -> decode(single mask)
      └─ check_finite_losses(losses, data_samples)
    predict(inputs, data_samples)                mode='predict'
      ├─ image_embedding
      └─ per image, per chunk of gt instances: _score_prompts
           ├─ '1-box': decode(gt box, multimask) -> best predicted IoU -> IoU with gt
           └─ '1-point', 'k-click': center_points, then farthest_error_clicks, each step
              decoded with the previous logits -> IoU with gt after 0, k clicks
         -> sample.prompted_ious = {mode: (N,) IoUs}   (read by PromptedIoUMetric)

The model's input is square, ``image_size`` on a side (SAM: 1024); ``SamDataPreprocessor``
resizes the longer side to it, normalises and pads. The embedding is the neck's ``in_feature``
map; its stride sets the grid (SAM: stride 16, 64 x 64), and the prompt encoder and the mask
decoder are built for its channels (SAM: 256). With SAM's image encoder (``ViT`` +
``SamNeck``) and weights converted by ``convert_sam``, this is segment-anything's ``Sam``;
with any other backbone the same decoder runs at that backbone's image size.

Training follows the SAM paper (appendix A): the first prompt is a foreground point uniform in
the mask or the mask's box with noise; the loss is focal : dice = 20 : 1 on the one of the three
multimask outputs with the lowest loss, plus the MSE between each output's predicted IoU and its
real IoU; then corrective clicks, each from the previous prediction's larger error region, with
that prediction's logits fed back as the mask prompt and a single mask output; and two
iterations that add no click, only the previous logits (one at a random place among the clicks,
one at the end), so that the model learns to refine its own masks. Choices the paper leaves
open:

- Resolution: the loss compares the logits upsampled to the model input (cropped to the
  image's valid part, ``img_shape``) with the gt masks there, not the 4h x 4w low-res logits
  with downsampled masks: scores are taken at full resolution, small objects survive (a 25 px
  object of the 128 px stand-in covers ~6 pixels of a 64 x 64 grid), and SAM 2's training code
  supervises its upsampled masks too. The cost is N x M x H x W floats per step.
- IoU target: every multimask output's predicted IoU is trained, against the IoU of that
  output's binarised mask (logit > 0) with the gt, not only the chosen output's: inference ranks
  the three outputs by their predicted IoU, so all three must be calibrated (SAM 2's loss does
  the same with ``supervise_all_iou``).
- The prediction a corrective click is drawn from, and whose logits are fed back, is the output
  with the highest predicted IoU (what inference would keep), as in SAM 2's training.
- Random prompts, and the place of the refinement iterations (drawn per image and first-prompt
  kind), draw from torch's global generator, which mmengine's ``randomness.seed`` seeds.
"""
from __future__ import annotations

import logging
import re
import warnings
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torchvision.ops import masks_to_boxes, sigmoid_focal_loss

from ...checkpoint.loading import load_backbone_checkpoint
from ...registry import MODELS
from ..heads.sam import build_mask_decoder, build_prompt_encoder
from .finite import check_finite_losses, describe_sample
from .neck_chain import apply_neck, build_neck
from .sam_prompts import (center_points, farthest_error_clicks, noisy_boxes,
                          random_error_clicks, random_points_in_masks)

__all__ = ['PromptableSegmenter', 'parse_modes', 'refinement_schedule']


_TRAIN_CFG_DEFAULTS = dict(max_instances=16, box_prob=0.5, num_clicks=8, refine_iterations=2,
                           freeze_image_encoder=False, focal_weight=20.0, dice_weight=1.0,
                           iou_weight=1.0)
_TEST_CFG_DEFAULTS = dict(modes=('1-point', '1-box', '1-click', '3-click', '5-click'),
                          chunk_size=16)
_MODE = re.compile(r'(1-point|1-box|([1-9][0-9]*)-click)')


def parse_modes(modes: Sequence[str]) -> dict[str, int]:
    """Prompt modes -> corrective clicks after the first point (-1 for '1-box').

    ``'1-point'``: segment-anything-fast's point; ``'1-box'``: the gt box; ``'k-click'``: the
    first point and then k corrective clicks (k >= 1).
    """
    if isinstance(modes, str):
        modes = (modes,)
    parsed = {}
    for mode in modes:
        match = _MODE.fullmatch(str(mode))
        if match is None:
            raise ValueError(f"unknown prompt mode {mode!r}; modes are '1-point', '1-box' and "
                             "'k-click' (k corrective clicks after the first point, k >= 1)")
        parsed[mode] = -1 if mode == '1-box' else int(match.group(2) or 0)
    if not parsed:
        raise ValueError('test_cfg modes is empty; give at least one prompt mode')
    return parsed


def _check_cfg(kind: str, cfg: Mapping | None, defaults: Mapping, *,
               integers: Mapping[str, int]) -> dict:
    """``cfg`` over ``defaults``; unknown keys are errors, and each key of ``integers`` must be
    an integer at least its value."""
    unknown = set(cfg or {}) - set(defaults)
    if unknown:
        raise KeyError(f'PromptableSegmenter {kind} has unknown keys {sorted(unknown)}; '
                       f'allowed: {sorted(defaults)}')
    cfg = {**defaults, **(cfg or {})}
    for key, least in integers.items():
        if int(cfg[key]) != cfg[key] or cfg[key] < least:
            raise ValueError(f'{kind} {key} must be an integer >= {least}; got {cfg[key]!r}')
        cfg[key] = int(cfg[key])
    return cfg


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
        train_cfg: ``max_instances`` (gt instances per image, a random subset; 16),
            ``box_prob`` (chance that the first prompt is a box, else a point; 0.5, as SAM),
            ``num_clicks`` (corrective-click iterations after the first prompt; 8, as SAM),
            ``refine_iterations`` (iterations that feed back the previous logits without a new
            click, the last at the end and the others at random places among the clicks; 2,
            as SAM),
            ``freeze_image_encoder`` (backbone and neck get no gradients and stay in eval mode;
            False), ``focal_weight`` / ``dice_weight`` / ``iou_weight`` (20, 1, 1, as SAM).
        test_cfg: ``modes`` (the prompts scored, see ``parse_modes``; default '1-point',
            '1-box', '1-click', '3-click', '5-click') and ``chunk_size`` (instances decoded at
            once, which bounds the full-size masks held; 16).
        backbone_checkpoint: path of a converted backbone state dict loaded at ``init_weights``.
        init_cfg: mmengine init config.
    """

    mask_threshold = 0.0  # a pixel is in the mask where its logit > 0, as segment-anything's Sam
    check_finite_loss = True  # off when the optim wrapper skips non-finite steps (finite.py)
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
        self.train_cfg = _check_cfg('train_cfg', train_cfg, _TRAIN_CFG_DEFAULTS,
                                    integers=dict(max_instances=1, num_clicks=0,
                                                  refine_iterations=0))
        if not 0.0 <= self.train_cfg['box_prob'] <= 1.0:
            raise ValueError(f'train_cfg box_prob is a probability; got '
                             f'{self.train_cfg["box_prob"]!r}')
        self.test_cfg = _check_cfg('test_cfg', test_cfg, _TEST_CFG_DEFAULTS,
                                   integers=dict(chunk_size=1))
        self.modes = parse_modes(self.test_cfg['modes'])
        self.backbone_checkpoint = backbone_checkpoint
        self.freeze_image_encoder = bool(self.train_cfg['freeze_image_encoder'])
        if self.freeze_image_encoder:
            for module in self._image_encoder():
                module.requires_grad_(False)
                module.eval()

    def init_weights(self) -> None:
        super().init_weights()
        if self.backbone_checkpoint is not None:
            load_backbone_checkpoint(self.backbone_checkpoint, self.backbone, self.neck)

    def _image_encoder(self) -> list[torch.nn.Module]:
        return [self.backbone] + ([self.neck] if self.neck is not None else [])

    def train(self, mode: bool = True) -> 'PromptableSegmenter':
        """As ``nn.Module.train``; a frozen image encoder stays in eval mode."""
        super().train(mode)
        if self.freeze_image_encoder:
            for module in self._image_encoder():
                module.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.mask_decoder.iou_token.weight.device

    # ---------------------------------------------------------------- the three stages
    def image_embedding(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) preprocessed images -> (B, C, h, w) embeddings."""
        if tuple(inputs.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f'inputs of size {tuple(inputs.shape[-2:])} are not the model\'s '
                             f'square input ({self.image_size}, {self.image_size}); '
                             'SamDataPreprocessor resizes and pads images to it')
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


    # ---------------------------------------------------------------- training
    def loss(self, inputs: torch.Tensor, data_samples: Sequence) -> dict[str, torch.Tensor]:
        """``loss_focal``, ``loss_dice`` and ``loss_iou`` (weighted), each the mean over the
        batch's prompted instances of the mean over the 1 + ``num_clicks`` +
        ``refine_iterations`` iterations."""
        if data_samples is None:
            raise ValueError('PromptableSegmenter.loss needs data_samples with gt_instances '
                             '(masks)')
        if self.freeze_image_encoder:
            with torch.no_grad():
                embeddings = self.image_embedding(inputs)
        else:
            embeddings = self.image_embedding(inputs)
        totals = dict(loss_focal=0.0, loss_dice=0.0, loss_iou=0.0)
        count = 0
        for embedding, sample in zip(embeddings, data_samples):
            gt = self._training_masks(sample, tuple(inputs.shape[-2:]))
            if not len(gt):
                continue
            is_box = torch.rand(len(gt)) < self.train_cfg['box_prob']
            for boxed in (False, True):
                group = gt[(is_box == boxed).to(gt.device)]
                if len(group):
                    for name, value in self._interactive_loss(embedding[None], group,
                                                              boxed).items():
                        totals[name] = totals[name] + value
                    count += len(group)
        if count == 0:
            # no instance to prompt: zero losses that still reach every trained parameter, so
            # that distributed training sees the same graph on every process
            zero = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
            losses = {name: zero for name in totals}
        else:
            losses = {name: value / count for name, value in totals.items()}
        if self.check_finite_loss:
            check_finite_losses(losses, data_samples)
        return losses

    def _training_masks(self, sample, size: tuple[int, int]) -> torch.Tensor:
        """(N, h, w) bool gt masks of one image in the input frame, cropped to its valid part
        (``img_shape``): the non-empty ones, a random subset of at most ``max_instances``."""
        gt = sample.get('gt_instances')
        h, w = sample.metainfo.get('img_shape', size)[:2]
        if gt is None or 'masks' not in gt or not len(gt.masks):
            if gt is not None and len(gt) and 'masks' not in gt:
                raise ValueError(f'image {describe_sample(sample)} has gt_instances without masks; '
                                 'load them with LoadAnnotations(with_mask=True)')
            return torch.zeros((0, h, w), dtype=torch.bool, device=self.device)
        masks = gt.masks.to(self.device).bool()[:, :h, :w]
        _warn_empty(masks, sample)
        masks = masks[masks.flatten(1).any(1)]
        if len(masks) > self.train_cfg['max_instances']:
            keep = torch.randperm(len(masks))[:self.train_cfg['max_instances']]
            masks = masks[keep.to(masks.device)]
        return masks

    def _interactive_loss(self, embedding: torch.Tensor, gt: torch.Tensor,
                          boxed: bool) -> dict[str, torch.Tensor]:
        """Loss sums over N instances of one image, each the mean over its iterations: the
        first prompt (a box if ``boxed`` else a point), then the steps of
        ``refinement_schedule``: corrective clicks and refinements without a click, each fed the
        previous prediction's logits.

        Args:
            embedding: (1, C, h, w) the image's embedding.
            gt: (N, H, W) bool non-empty gt masks, H, W the image's valid part of the input.
            boxed: first prompt kind.
        """
        cfg = self.train_cfg
        n, h, w = gt.shape
        rows = torch.arange(n, device=gt.device)
        points = labels = boxes = mask_inputs = None
        if boxed:
            boxes = noisy_boxes(masks_to_boxes(gt), (h, w))
        else:
            points = random_points_in_masks(gt)[:, None]  # (N, 2) -> (N, 1, 2)
            labels = torch.ones((n, 1), dtype=torch.long, device=gt.device)
        sums = dict(loss_focal=0.0, loss_dice=0.0, loss_iou=0.0)
        clicks = refinement_schedule(cfg['num_clicks'], cfg['refine_iterations'])
        iterations = 1 + len(clicks)
        for step in range(iterations):
            low_res, iou_pred = self.decode(embedding, point_coords=points,
                                            point_labels=labels, boxes=boxes,
                                            mask_inputs=mask_inputs,
                                            multimask_output=step == 0)
            # (N, M, 4h', 4w') -> (N, M, H, W): the model input's valid part
            logits = self._input_logits(low_res, (h, w))
            focal, dice, real_iou = _mask_losses(logits, gt)
            combined = cfg['focal_weight'] * focal + cfg['dice_weight'] * dice
            best = combined.detach().argmin(1)  # the lowest-loss output of each instance
            sums['loss_focal'] = sums['loss_focal'] + cfg['focal_weight'] * focal[rows, best].sum()
            sums['loss_dice'] = sums['loss_dice'] + cfg['dice_weight'] * dice[rows, best].sum()
            iou_mse = (iou_pred - real_iou).pow(2).mean(1)  # every output's, (N, M) -> (N,)
            sums['loss_iou'] = sums['loss_iou'] + cfg['iou_weight'] * iou_mse.sum()
            if step + 1 == iterations:
                break
            with torch.no_grad():
                kept = iou_pred.argmax(1)  # the output inference would keep
                mask_inputs = low_res[rows, kept][:, None].detach()  # (N, 1, 4h', 4w')
                if not clicks[step]:
                    continue  # a refinement: the same prompts and these logits
                coords, click_labels = random_error_clicks(logits[rows, kept] > 0, gt)
            points = (coords[:, None] if points is None
                      else torch.cat([points, coords[:, None]], dim=1))
            labels = (click_labels[:, None] if labels is None
                      else torch.cat([labels, click_labels[:, None]], dim=1))
        return {name: value / iterations for name, value in sums.items()}

    def _input_logits(self, low_res: torch.Tensor, img_shape: tuple[int, int]) -> torch.Tensor:
        """(N, M, 4h, 4w) low-res logits -> (N, M, H, W) at the model input, cropped to the
        image's valid part ``img_shape`` (the padding is at the bottom and right)."""
        logits = F.interpolate(low_res, (self.image_size, self.image_size), mode='bilinear',
                               align_corners=False)
        return logits[..., :img_shape[0], :img_shape[1]]

    # ---------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, data_samples: Sequence | None = None) -> list:
        """Score the prompts of ``test_cfg['modes']`` on every non-empty gt instance: each
        sample gets ``prompted_ious``, {mode: (N,) float IoUs at the original size}, in the
        order of ``gt_instances`` without the empty masks."""
        if data_samples is None:
            raise ValueError('PromptableSegmenter.predict prompts with the ground truth and needs '
                             'data_samples with gt_instances (bboxes, masks)')
        embeddings = self.image_embedding(inputs)
        size = tuple(inputs.shape[-2:])
        for embedding, sample in zip(embeddings, data_samples):
            sample.prompted_ious = self._score_image(embedding[None], sample, size)
        return list(data_samples)

    def _score_image(self, embedding: torch.Tensor, sample,
                     size: tuple[int, int]) -> dict[str, torch.Tensor]:
        meta = sample.metainfo
        h, w = meta.get('img_shape', size)[:2]
        ori_h, ori_w = meta.get('ori_shape', (h, w))[:2]
        sx, sy = meta.get('scale_factor', (w / ori_w, h / ori_h))
        gt = sample.get('gt_instances')
        ious = {mode: [torch.zeros(0)] for mode in self.modes}
        if gt is None or not len(gt):
            return {mode: torch.cat(values) for mode, values in ious.items()}
        if 'masks' not in gt:
            raise ValueError(f'image {describe_sample(sample)} has gt_instances without masks; '
                             'load them with LoadAnnotations(with_mask=True)')
        masks = gt.masks.to(self.device).bool()
        if tuple(masks.shape[-2:]) != (ori_h, ori_w):
            raise ValueError(f'image {describe_sample(sample)}: gt masks of size '
                             f'{tuple(masks.shape[-2:])} are not at ori_shape {(ori_h, ori_w)}; '
                             'evaluation compares at the original size')
        _warn_empty(masks, sample)
        keep = masks.flatten(1).any(1)
        masks, boxes = masks[keep], gt.bboxes.to(self.device).float()[keep]
        scale = torch.tensor([sx, sy], dtype=torch.float32, device=self.device)
        frame = dict(img_shape=(h, w), ori_shape=(ori_h, ori_w), scale=scale)
        chunk = self.test_cfg['chunk_size']
        for start in range(0, len(masks), chunk):
            scores = self._score_prompts(embedding, masks[start:start + chunk],
                                         boxes[start:start + chunk], frame)
            for mode, values in scores.items():
                ious[mode].append(values.float().cpu())
        return {mode: torch.cat(values) for mode, values in ious.items()}

    def _score_prompts(self, embedding: torch.Tensor, gt: torch.Tensor, boxes: torch.Tensor,
                       frame: Mapping) -> dict[str, torch.Tensor]:
        """IoUs of N instances under each mode.

        Args:
            embedding: (1, C, h, w) the image's embedding.
            gt: (N, H, W) bool non-empty gt masks at the original size.
            boxes: (N, 4) their gt boxes (x1, y1, x2, y2) in original pixels.
            frame: ``img_shape``, ``ori_shape`` and ``scale`` (sx, sy), original -> input.
        """
        scale = frame['scale']
        scores = {}

        def masks_of(low_res: torch.Tensor) -> torch.Tensor:
            # (N, 1, 4h, 4w) -> (N, H, W) bool at the original size
            logits = self.postprocess_masks(low_res, frame['img_shape'], frame['ori_shape'])
            return logits[:, 0] > self.mask_threshold

        if '1-box' in self.modes:
            low_res = _best_output(*self.decode(embedding, boxes=boxes * scale.repeat(2),
                                                multimask_output=True))
            scores['1-box'] = _mask_iou(masks_of(low_res), gt)
        max_clicks = max((k for k in self.modes.values() if k >= 0), default=-1)
        if max_clicks < 0:
            return scores
        points = center_points(gt)[:, None]  # (N, 2) -> (N, 1, 2), original pixels
        labels = torch.ones(points.shape[:2], dtype=torch.long, device=gt.device)
        low_res = _best_output(*self.decode(embedding, point_coords=points * scale,
                                            point_labels=labels, multimask_output=True))
        pred = masks_of(low_res)
        by_clicks = {0: _mask_iou(pred, gt)}
        for k in range(1, max_clicks + 1):
            coords, click_labels = farthest_error_clicks(pred, gt)
            points = torch.cat([points, coords[:, None]], dim=1)
            labels = torch.cat([labels, click_labels[:, None]], dim=1)
            low_res, _ = self.decode(embedding, point_coords=points * scale, point_labels=labels,
                                     mask_inputs=low_res, multimask_output=False)
            pred = masks_of(low_res)
            by_clicks[k] = _mask_iou(pred, gt)
        for mode, k in self.modes.items():
            if k >= 0:
                scores[mode] = by_clicks[k]
        return {mode: scores[mode] for mode in self.modes}


def refinement_schedule(num_clicks: int, refine_iterations: int) -> list[bool]:
    """The training iterations after the first prompt, in order: True adds a corrective click,
    False only feeds back the previous logits. As the SAM paper (appendix A): the last
    refinement comes at the end, the others at random places among the clicks."""
    steps = [True] * num_clicks
    for _ in range(refine_iterations - 1):
        steps.insert(int(torch.randint(len(steps) + 1, ())), False)
    return steps + [False] * min(refine_iterations, 1)


def _mask_losses(logits: torch.Tensor, gt: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per instance and output: focal loss (mean over pixels; torchvision's, alpha 0.25, gamma
    2), dice loss, and the real IoU of the binarised output (no gradient).

    torchvision has no dice loss; this one is DETR's / SAM 2's, 1 - (2|p t| + 1) / (|p| + |t| + 1)
    with p = sigmoid(logits).

    Args:
        logits: (N, M, H, W) mask logits.
        gt: (N, H, W) bool gt masks.

    Returns:
        focal (N, M), dice (N, M), IoU (N, M).
    """
    target = gt[:, None].expand_as(logits).float()
    focal = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0,
                               reduction='none').flatten(2).mean(-1)
    prob = logits.sigmoid().flatten(2)  # (N, M, H, W) -> (N, M, H*W)
    flat = target.flatten(2)
    dice = 1 - (2 * (prob * flat).sum(-1) + 1) / (prob.sum(-1) + flat.sum(-1) + 1)
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & gt[:, None]).flatten(2).sum(-1)
        union = (pred | gt[:, None]).flatten(2).sum(-1)
        iou = inter.float() / union.clamp(min=1).float()
    return focal, dice, iou


def _mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool predicted and gt masks -> (N,) float IoU (0 where both are empty)."""
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    return inter.float() / union.clamp(min=1).float()


def _best_output(low_res: torch.Tensor, iou_pred: torch.Tensor) -> torch.Tensor:
    """(N, M, 4h, 4w) logits and (N, M) predicted IoUs -> (N, 1, 4h, 4w), each instance's output
    with the highest predicted IoU (segment-anything-fast's ``create_result_entry`` keeps
    that one of the three masks of its 1-point prompt)."""
    best = iou_pred.argmax(1)
    return low_res[torch.arange(len(low_res), device=low_res.device), best][:, None]


def _warn_empty(masks: torch.Tensor, sample) -> None:
    """One warning per image counting its gt instances with an empty mask (skipped)."""
    empty = int((~masks.flatten(1).any(1)).sum())
    if empty:
        message = (f'image {describe_sample(sample)}: skipped {empty} of {len(masks)} gt instances '
                   f'whose mask is empty at size {tuple(masks.shape[-2:])}')
        print_log(message, logger='current', level=logging.WARNING)
        warnings.warn(message, stacklevel=3)
