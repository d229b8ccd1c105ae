"""SamAutomaticMaskGenerator: every mask of an image from a grid of point prompts, with
segment-anything's parameters and output records, on any ``PromptableSegmenter``.

Call graph:

    generate(image)
      ├─ _image_masks(image)            the whole image, then (2**i)**2 crops in layer i
      │    ├─ _crop_masks(...)          set_image on the crop, its points in batches
      │    │    ├─ _batch_masks(...)    decode; drop predicted IoU <= pred_iou_thresh at low res
      │    │    │    └─ _chunk_masks()  masks_per_chunk at a time: upsample, stability score,
      │    │    │                       threshold, boxes, crop-edge filter, RLE
      │    │    └─ box NMS inside the crop (box_nms_thresh, best predicted IoU first)
      │    └─ box NMS across crops (crop_nms_thresh, the smaller crop first)
      ├─ _mend_small_regions(data)      min_mask_region_area > 0: fill small holes, drop small
      │                                 islands, NMS again (unmended masks first)
      └─ _records(data)                 segment-anything's records, in output_mode

Memory is bounded by ``points_per_batch`` and ``masks_per_chunk``, never by the number of points:
a batch keeps its ``3 * points_per_batch`` masks as low-resolution logits (SAM: 256 x 256), drops
those under ``pred_iou_thresh`` there, and upsamples the rest ``masks_per_chunk`` at a time; what
outlives a chunk is an RLE, a box and three numbers per mask. segment-anything's generator
upsamples all ``3 * points_per_batch`` masks of a batch to full resolution in float (twice over,
while resizing) before filtering. Both give the same masks: every filter sees the same numbers.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from segment_anything.utils.amg import (MaskData, area_from_rle, batched_mask_to_box,
                                        box_xyxy_to_xywh, build_all_layer_point_grids,
                                        calculate_stability_score, coco_encode_rle,
                                        generate_crop_boxes, is_box_near_crop_edge,
                                        mask_to_rle_pytorch, remove_small_regions, rle_to_mask,
                                        uncrop_boxes_xyxy, uncrop_masks, uncrop_points)
from torchvision.ops import batched_nms, box_area

from ..models.tasks.promptable_segmenter import PromptableSegmenter
from .sam_predictor import SamPredictor, as_rgb_uint8

__all__ = ['SamAutomaticMaskGenerator']

OUTPUT_MODES = ('binary_mask', 'uncompressed_rle', 'coco_rle')


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}; got {value!r}')
    return int(value)


def _check_real(name: str, value: Any, low: float, high: float | None = None,
                high_open: bool = False) -> float:
    """A finite number in [low, high] ([low, high) with ``high_open``; >= low without ``high``)."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and value >= low
          and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        want = (f'a finite number >= {low}' if high is None
                else f'a number in [{low}, {high}{")" if high_open else "]"}')
        raise ValueError(f'{name} must be {want}; got {value!r}')
    return float(value)


def _no_masks() -> MaskData:
    """MaskData with the keys of a crop's masks and no masks: what concatenation starts from."""
    return MaskData(rles=[], boxes=torch.zeros(0, 4, dtype=torch.int64),
                    iou_preds=torch.zeros(0), stability_score=torch.zeros(0),
                    points=torch.zeros(0, 2, dtype=torch.float64))


def _concat(parts: list[MaskData]) -> MaskData:
    """The masks of all ``parts`` (MaskData with the same keys) in one: tensors concatenated once,
    lists joined. (``MaskData.cat`` deep-copies every list it appends, RLEs included.)"""
    merged = {}
    for key, first in parts[0].items():
        values = [part[key] for part in parts]
        merged[key] = (torch.cat(values) if isinstance(first, torch.Tensor)
                       else [item for value in values for item in value])
    return MaskData(**merged)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the boxes (x1, y1, x2, y2) that survive one-class NMS, best score first."""
    return batched_nms(boxes.float(), scores.float(), torch.zeros(len(boxes), dtype=torch.int64),
                       iou_threshold)


class SamAutomaticMaskGenerator:
    """segment-anything's ``SamAutomaticMaskGenerator`` for a densevit ``PromptableSegmenter``.

    Args:
        model: the promptable segmenter (any backbone; in eval mode, on its device).
        points_per_side: points along each side of the image (a points_per_side**2 grid), or
            None when ``point_grids`` gives the points.
        points_per_batch: points decoded at once; with ``masks_per_chunk`` it bounds the memory.
        pred_iou_thresh: keep masks whose predicted IoU is above this (0: keep all), in [0, 1].
        stability_score_thresh: keep masks whose stability score is at least this (0: keep
            all), in [0, 1].
        stability_score_offset: the stability score is the IoU of the masks thresholded at
            ``mask_threshold`` +- this offset.
        box_nms_thresh: box IoU above which NMS drops a duplicate inside one crop.
        crop_n_layers: crop layers run besides the whole image; layer i has (2**i)**2 crops.
        crop_nms_thresh: box IoU above which NMS drops a duplicate between crops.
        crop_overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the
            image's shorter side (halved with each further layer), in [0, 1).
        crop_n_points_downscale_factor: layer i samples points_per_side / factor**i points a side.
        point_grids: one (P, 2) array of points (x, y) normalised to [0, 1] per layer
            (crop_n_layers + 1 of them); exclusive with ``points_per_side``.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this many pixels
            (needs OpenCV), then run NMS again.
        output_mode: ``'binary_mask'`` ((H, W) bool arrays), ``'uncompressed_rle'`` or
            ``'coco_rle'`` (pycocotools' compressed RLE).
        masks_per_chunk: masks upsampled to the image's resolution at a time (not in
            segment-anything: there, a whole batch is).
    """

    def __init__(self, model: PromptableSegmenter, points_per_side: int | None = 32,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1,
                 point_grids: list[np.ndarray] | None = None, min_mask_region_area: float = 0,
                 output_mode: str = 'binary_mask', *, masks_per_chunk: int = 16) -> None:
        if not isinstance(model, PromptableSegmenter):
            raise TypeError(f'SamAutomaticMaskGenerator takes a densevit PromptableSegmenter '
                            f'(e.g. init_model("configs/sam/sam_vit-b.py", checkpoint)); got '
                            f'{type(model).__module__}.{type(model).__name__}')
        self.points_per_batch = _check_int('points_per_batch', points_per_batch, 1)
        self.pred_iou_thresh = _check_real('pred_iou_thresh', pred_iou_thresh, 0, 1)
        self.stability_score_thresh = _check_real('stability_score_thresh',
                                                  stability_score_thresh, 0, 1)
        self.stability_score_offset = _check_real('stability_score_offset',
                                                  stability_score_offset, 0)
        self.box_nms_thresh = _check_real('box_nms_thresh', box_nms_thresh, 0, 1)
        self.crop_n_layers = _check_int('crop_n_layers', crop_n_layers, 0)
        self.crop_nms_thresh = _check_real('crop_nms_thresh', crop_nms_thresh, 0, 1)
        self.crop_overlap_ratio = _check_real('crop_overlap_ratio', crop_overlap_ratio, 0, 1,
                                              high_open=True)
        self.crop_n_points_downscale_factor = _check_int(
            'crop_n_points_downscale_factor', crop_n_points_downscale_factor, 1)
        self.min_mask_region_area = _check_real('min_mask_region_area', min_mask_region_area, 0)
        self.masks_per_chunk = _check_int('masks_per_chunk', masks_per_chunk, 1)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f'output_mode must be one of {OUTPUT_MODES}; got {output_mode!r}')
        self.output_mode = output_mode
        if self.min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401
            except ImportError as error:
                raise ImportError(f'min_mask_region_area={min_mask_region_area} needs OpenCV '
                                  f'(pip install opencv-python-headless)') from error
        self.point_grids = self._point_grids(points_per_side, point_grids)
        self.predictor = SamPredictor(model)

    def _point_grids(self, points_per_side: int | None,
                     point_grids: list[np.ndarray] | None) -> list[np.ndarray]:
        """One (P, 2) grid of normalised points (x, y) per crop layer."""
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(f'give exactly one of points_per_side and point_grids; got '
                             f'points_per_side={points_per_side!r} and point_grids '
                             f'{"None" if point_grids is None else "given"}')
        layers = self.crop_n_layers + 1
        if points_per_side is not None:
            points_per_side = _check_int('points_per_side', points_per_side, 1)
            factor = self.crop_n_points_downscale_factor
            if points_per_side // factor ** self.crop_n_layers < 1:
                raise ValueError(
                    f'points_per_side={points_per_side} leaves no points in crop layer '
                    f'{self.crop_n_layers} with crop_n_points_downscale_factor={factor} '
                    f'({points_per_side} // {factor}**{self.crop_n_layers} = 0); need '
                    f'points_per_side >= {factor ** self.crop_n_layers}')
            return build_all_layer_point_grids(points_per_side, self.crop_n_layers, factor)
        if len(point_grids) < layers:
            raise ValueError(f'point_grids has {len(point_grids)} grids; crop_n_layers='
                             f'{self.crop_n_layers} needs one per layer, {layers}')
        grids = []
        for i, grid in enumerate(point_grids):
            grid = np.asarray(grid, dtype=np.float64)
            if (grid.ndim != 2 or grid.shape[1] != 2 or len(grid) == 0
                    or not np.isfinite(grid).all() or grid.min() < 0 or grid.max() > 1):
                raise ValueError(f'point_grids[{i}] must be a non-empty (P, 2) array of points '
                                 f'(x, y) in [0, 1]; got shape {grid.shape}'
                                 + (f', values in [{grid.min()}, {grid.max()}]' if grid.size
                                    else ''))
            grids.append(grid)
        return grids

    # ---------------------------------------------------------------- the public entry point
    @torch.no_grad()
    def generate(self, image: np.ndarray, image_format: str = 'RGB') -> list[dict[str, Any]]:
        """Masks of everything in an image (H, W, 3) uint8 in ``image_format``; grayscale, RGBA,
        16-bit and float images in [0, 1] are converted first.

        Returns:
            one record per mask, as segment-anything's: ``segmentation`` (per ``output_mode``),
            ``area`` (pixels), ``bbox`` (x, y, w, h), ``predicted_iou``, ``point_coords``
            ([[x, y]], the prompt), ``stability_score``, ``crop_box`` (x, y, w, h).
        """
        image = as_rgb_uint8(image, image_format)
        data = self._image_masks(image)
        if self.min_mask_region_area > 0:
            data = self._mend_small_regions(data)
        return self._records(data)

    # ---------------------------------------------------------------- stages
    def _image_masks(self, image: np.ndarray) -> MaskData:
        """Masks of the whole image and of every crop, duplicates across crops removed."""
        image_size = image.shape[:2]
        crop_boxes, layers = generate_crop_boxes(image_size, self.crop_n_layers,
                                                 self.crop_overlap_ratio)
        for x0, y0, x1, y1 in crop_boxes:
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f'an image of height {image_size[0]} and width {image_size[1]} '
                                 f'is too small for crop_n_layers={self.crop_n_layers}: crop '
                                 f'{[x0, y0, x1, y1]} is empty; use fewer crop layers')
        data = _concat([self._crop_masks(image, crop_box, layer, image_size)
                        for crop_box, layer in zip(crop_boxes, layers)])
        if len(crop_boxes) > 1:
            # the same object found in several crops: keep it from the smallest crop
            data.filter(_nms(data['boxes'], 1 / box_area(data['crop_boxes'].float()),
                             self.crop_nms_thresh))
        return data

    def _crop_masks(self, image: np.ndarray, crop_box: list[int], layer: int,
                    image_size: tuple[int, int]) -> MaskData:
        """Masks of one crop, in the whole image's frame, duplicates inside the crop removed."""
        x0, y0, x1, y1 = crop_box
        self.predictor.set_image(image[y0:y1, x0:x1])
        crop_h, crop_w = self.predictor.original_size
        # segment-anything's decoder runs ~10% faster on an NCHW-contiguous embedding; a timm
        # LayerNorm2d at the end of a neck leaves it channels-last
        embedding = self.predictor.get_image_embedding().contiguous()
        # normalised (x, y) -> pixels of the crop
        points = self.point_grids[layer] * np.array([[crop_w, crop_h]])
        data = _concat([_no_masks()] + [
            self._batch_masks(embedding, points[start:start + self.points_per_batch], crop_box,
                              image_size)
            for start in range(0, len(points), self.points_per_batch)])
        self.predictor.reset_image()
        data.filter(_nms(data['boxes'], data['iou_preds'], self.box_nms_thresh))
        data['boxes'] = uncrop_boxes_xyxy(data['boxes'], crop_box)
        data['points'] = uncrop_points(data['points'], crop_box)
        data['crop_boxes'] = torch.tensor([crop_box], dtype=torch.int64).repeat(
            len(data['rles']), 1)
        return data

    def _batch_masks(self, embedding: torch.Tensor, points: np.ndarray, crop_box: list[int],
                     image_size: tuple[int, int]) -> MaskData:
        """The masks of up to ``points_per_batch`` points (P, 2) in crop pixels on the crop's
        (1, C, h, w) embedding that pass the filters, as RLEs in the whole image's frame; boxes
        and points stay in the crop's."""
        predictor = self.predictor
        coords = predictor.transform.apply_coords(points, predictor.original_size)
        # (P, 2) -> (P, 1, 2): one point per prompt
        coords = torch.as_tensor(coords, dtype=torch.float, device=predictor.device)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=predictor.device)
        low_res, iou_preds = predictor.model.decode(embedding, point_coords=coords,
                                                    point_labels=labels, multimask_output=True)
        masks_per_point = low_res.shape[1]
        # (P, M, 4h, 4w) -> (P*M, 1, 4h, 4w): the M masks of each point in turn
        candidates = MaskData(low_res=low_res.flatten(0, 1)[:, None],
                              iou_preds=iou_preds.flatten(0, 1),
                              points=torch.as_tensor(points).repeat_interleave(masks_per_point, 0))
        del low_res
        if self.pred_iou_thresh > 0:
            candidates.filter(candidates['iou_preds'] > self.pred_iou_thresh)
        chunks = [slice(start, start + self.masks_per_chunk)
                  for start in range(0, len(candidates['iou_preds']), self.masks_per_chunk)]
        return _concat([_no_masks()] + [
            self._chunk_masks(candidates['low_res'][chunk], candidates['iou_preds'][chunk],
                              candidates['points'][chunk], crop_box, image_size)
            for chunk in chunks])

    def _chunk_masks(self, low_res: torch.Tensor, iou_preds: torch.Tensor, points: torch.Tensor,
                     crop_box: list[int], image_size: tuple[int, int]) -> MaskData:
        """Up to ``masks_per_chunk`` low-res logits (K, 1, 4h, 4w) -> the stable masks that do
        not end at a crop's inner edge, as RLEs of the whole image."""
        predictor, model = self.predictor, self.predictor.model
        # (K, 1, 4h, 4w) -> (K, h_crop, w_crop) logits at the crop's resolution
        logits = model.postprocess_masks(low_res, predictor.input_size,
                                         predictor.original_size)[:, 0]
        data = MaskData(masks=logits, iou_preds=iou_preds.cpu(), points=points,
                        stability_score=calculate_stability_score(
                            logits, model.mask_threshold, self.stability_score_offset).cpu())
        del logits
        if self.stability_score_thresh > 0:
            data.filter(data['stability_score'] >= self.stability_score_thresh)
        if not len(data['iou_preds']):
            return _no_masks()
        data['masks'] = data['masks'] > model.mask_threshold
        data['boxes'] = batched_mask_to_box(data['masks']).cpu()
        image_h, image_w = image_size
        near_edge = is_box_near_crop_edge(data['boxes'], crop_box, [0, 0, image_w, image_h])
        if near_edge.any():
            data.filter(~near_edge)
        data['rles'] = mask_to_rle_pytorch(uncrop_masks(data['masks'], crop_box, image_h,
                                                        image_w))
        del data['masks']
        return data

    def _mend_small_regions(self, data: MaskData) -> MaskData:
        """Fill holes and drop islands under ``min_mask_region_area`` pixels, one mask at a time;
        then NMS over the mended boxes, preferring masks that needed no mending."""
        if not data['rles']:
            return data
        nms_boxes, boxes, rles, unmended = [], [], [], []
        for rle, box in zip(data['rles'], data['boxes']):
            mask, filled = remove_small_regions(rle_to_mask(rle), self.min_mask_region_area,
                                                mode='holes')
            mask, cut = remove_small_regions(mask, self.min_mask_region_area, mode='islands')
            mask = torch.as_tensor(mask)[None]  # (1, H, W) bool
            nms_boxes.append(batched_mask_to_box(mask)[0])
            mended = filled or cut
            # an unmended mask keeps the box it was found with (the same, unless it is empty)
            boxes.append(nms_boxes[-1] if mended else box)
            rles.append(mask_to_rle_pytorch(mask)[0] if mended else rle)
            unmended.append(not mended)
        keep = _nms(torch.stack(nms_boxes), torch.tensor(unmended, dtype=torch.float),
                    max(self.box_nms_thresh, self.crop_nms_thresh))
        data['rles'] = rles
        data['boxes'] = torch.stack(boxes)
        data.filter(keep)
        return data

    def _records(self, data: MaskData) -> list[dict[str, Any]]:
        records = []
        for i, rle in enumerate(data['rles']):
            if self.output_mode == 'binary_mask':
                segmentation = rle_to_mask(rle)
            elif self.output_mode == 'coco_rle':
                segmentation = coco_encode_rle(rle)
            else:
                segmentation = rle
            records.append(dict(
                segmentation=segmentation, area=area_from_rle(rle),
                bbox=box_xyxy_to_xywh(data['boxes'][i]).tolist(),
                predicted_iou=data['iou_preds'][i].item(),
                point_coords=[data['points'][i].tolist()],
                stability_score=data['stability_score'][i].item(),
                crop_box=box_xyxy_to_xywh(data['crop_boxes'][i]).tolist()))
        return records
