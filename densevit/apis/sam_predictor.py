"""SamPredictor: embed an image once, then prompt it many times, with segment-anything's API.

``set_image`` resizes with segment-anything's own ``ResizeLongestSide`` (so an official model
gives exactly segment-anything's masks), preprocesses through the model's
``SamDataPreprocessor`` and caches the embedding; ``predict`` takes points, a box and a previous
low-res mask in original-image pixels and returns numpy arrays, ``predict_torch`` takes many
prompts at once in model-input pixels. It runs any ``PromptableSegmenter``, whatever its backbone
and image size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

__all__ = ['SamPredictor', 'as_rgb_uint8']


def as_rgb_uint8(image: np.ndarray, image_format: str = 'RGB') -> np.ndarray:
    """An (H, W, 3) uint8 RGB copy of ``image``: grayscale (H, W) or (H, W, 1) is repeated to
    three channels, RGBA loses its alpha, 16-bit images are scaled by 255 / 65535, bool and
    float images in [0, 1] by 255; BGR is turned to RGB.

    Raises:
        ValueError: ``image_format`` is not RGB or BGR, the array is not an image, or its values
            do not fit its type's range.
    """
    if image_format not in ('RGB', 'BGR'):
        raise ValueError(f"image_format must be 'RGB' or 'BGR'; got {image_format!r}")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f'expected an image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got an '
                         f'array of shape {image.shape}')
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    if image_format == 'BGR':
        image = image[..., ::-1]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError(f'a float image must hold values in [0, 1]; got the range '
                             f'[{image.min()}, {image.max()}]')
        return np.round(image * 255.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer) and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    raise ValueError(f'cannot read a {image.dtype} image with values in [{image.min()}, '
                     f'{image.max()}] as 8-bit RGB; convert it to uint8 first')


class SamPredictor:
    """segment-anything's ``SamPredictor`` for a densevit ``PromptableSegmenter``.

    Args:
        model: the promptable segmenter (in eval mode, on its device).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.transform = ResizeLongestSide(model.image_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ---------------------------------------------------------------- the image
    def set_image(self, image: np.ndarray, image_format: str = 'RGB') -> None:
        """Embed an image (H, W, 3) uint8 in ``image_format``; grayscale, RGBA, 16-bit and float
        images in [0, 1] are converted first."""
        image = as_rgb_uint8(image, image_format)
        resized = self.transform.apply_image(image)
        # (h, w, 3) uint8 -> (1, 3, h, w)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None]
        self.set_torch_image(tensor, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor,
                        original_image_size: Sequence[int]) -> None:
        """Embed a (1, 3, h, w) image already resized so its longer side is the model's
        ``image_size`` (``self.transform.apply_image``); ``original_image_size`` = (H, W)."""
        if (transformed_image.ndim != 4 or transformed_image.shape[:2] != (1, 3)
                or max(transformed_image.shape[2:]) != self.model.image_size):
            raise ValueError(f'set_torch_image takes a (1, 3, h, w) image with longer side '
                             f'{self.model.image_size}; got {tuple(transformed_image.shape)}')
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        batch = self.model.data_preprocessor(dict(inputs=transformed_image, data_samples=None),
                                             False)
        self.features = self.model.image_embedding(batch['inputs'])
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The cached (1, C, h, w) embedding of the image set by ``set_image``."""
        self._check_image_set()
        return self.features

    def reset_image(self) -> None:
        """Forget the image and its embedding."""
        self.is_image_set = False
        self.features = None
        self.original_size = None
        self.input_size = None

    def _check_image_set(self) -> None:
        if not self.is_image_set:
            raise RuntimeError('no image is set: call set_image(image) before predicting')

    # ---------------------------------------------------------------- prompting
    def predict(self, point_coords: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                mask_input: np.ndarray | None = None, multimask_output: bool = True,
                return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt in original-image pixels.

        Args:
            point_coords: (P, 2) points (x, y).
            point_labels: (P,) 1 foreground, 0 background.
            box: (4,) box (x1, y1, x2, y2).
            mask_input: (1, 4h, 4w) low-res logits from an earlier call (SAM: 256 x 256).
            multimask_output: three masks (for an ambiguous prompt) instead of one.
            return_logits: mask logits instead of thresholded masks.

        Returns:
            masks (M, H, W) (bool, or float logits), IoU predictions (M,), low-res logits
            (M, 4h, 4w), M = 3 or 1.
        """
        self._check_image_set()
        if point_coords is None and box is None and mask_input is None:
            raise ValueError('predict needs a prompt: point_coords with point_labels, a box or '
                             'a mask_input')
        coords = labels = boxes = masks = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError('point_coords and point_labels go together; got only '
                                 + ('point_coords' if point_labels is None else 'point_labels'))
            point_coords = np.asarray(point_coords, dtype=np.float64)
            point_labels = np.asarray(point_labels)
            if point_coords.ndim != 2 or point_coords.shape[1] != 2:
                raise ValueError(f'point_coords must be (P, 2) (x, y); got shape '
                                 f'{point_coords.shape}')
            if point_labels.shape != (len(point_coords),):
                raise ValueError(f'{len(point_coords)} point_coords but point_labels of shape '
                                 f'{point_labels.shape}; one label per point')
            self._check_inside(point_coords, 'point_coords')
            coords = self.transform.apply_coords(point_coords, self.original_size)
            coords = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None]
        if box is not None:
            box = np.asarray(box, dtype=np.float64)
            if box.shape not in ((4,), (1, 4)):
                raise ValueError(f'box must be (4,) (x1, y1, x2, y2); got shape {box.shape}')
            self._check_inside(box.reshape(2, 2), 'box')
            boxes = self.transform.apply_boxes(box.reshape(1, 4), self.original_size)
            boxes = torch.as_tensor(boxes, dtype=torch.float, device=self.device)
        if mask_input is not None:
            masks = torch.as_tensor(mask_input, dtype=torch.float, device=self.device)[None]
        masks_out, iou, low_res = self.predict_torch(coords, labels, boxes, masks,
                                                     multimask_output, return_logits)
        return (masks_out[0].detach().cpu().numpy(), iou[0].detach().cpu().numpy(),
                low_res[0].detach().cpu().numpy())

    @torch.no_grad()
    def predict_torch(self, point_coords: torch.Tensor | None,
                      point_labels: torch.Tensor | None, boxes: torch.Tensor | None = None,
                      mask_input: torch.Tensor | None = None, multimask_output: bool = True,
                      return_logits: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """N prompts at once, in model-input pixels (``self.transform.apply_coords_torch``).

        Args:
            point_coords: (N, P, 2) points (x, y), or None.
            point_labels: (N, P) labels, or None.
            boxes: (N, 4) boxes, or None.
            mask_input: (N, 1, 4h, 4w) low-res logits, or None.
            multimask_output, return_logits: as in ``predict``.

        Returns:
            masks (N, M, H, W), IoU predictions (N, M), low-res logits (N, M, 4h, 4w).
        """
        self._check_image_set()
        if point_coords is None and boxes is None and mask_input is None:
            raise ValueError('predict_torch needs a prompt: points, boxes or a mask_input')
        if point_coords is not None:
            if point_labels is None or point_labels.shape != point_coords.shape[:2]:
                raise ValueError(f'point_coords of shape {tuple(point_coords.shape)} need '
                                 f'point_labels of shape {tuple(point_coords.shape[:2])}; got '
                                 f'{None if point_labels is None else tuple(point_labels.shape)}')
        low_res, iou = self.model.decode(self.features, point_coords=point_coords,
                                         point_labels=point_labels, boxes=boxes,
                                         mask_inputs=mask_input,
                                         multimask_output=multimask_output)
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _check_inside(self, xy: np.ndarray, name: str) -> None:
        """(P, 2) points (x, y) must lie in the original image, [0, W] x [0, H]."""
        h, w = self.original_size
        outside = ~np.isfinite(xy).all(1) | (xy[:, 0] < 0) | (xy[:, 0] > w) | \
            (xy[:, 1] < 0) | (xy[:, 1] > h)
        if outside.any():
            raise ValueError(f'{name} {xy[outside].tolist()} lie outside the image of width {w} '
                             f'and height {h} (x in [0, {w}], y in [0, {h}])')
