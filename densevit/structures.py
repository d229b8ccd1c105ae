"""The per-image record that flows from a dataset's pipeline through a model to a metric.

Fields a ``DataSample`` may carry (all optional):

- ``gt_sem_seg`` / ``pred_sem_seg``: ``PixelData`` whose ``data`` is a (1, H, W) long tensor of
  class indices (255 = ignore); ``seg_logits``: ``PixelData`` with (num_classes, H, W) logits.
- ``gt_instances``: ``InstanceData`` with ``bboxes`` (N, 4) float xyxy pixels, ``labels`` (N,)
  long contiguous class indices and, for instance segmentation, ``masks`` (N, H, W) bool.
- ``ignored_instances``: the crowd regions, with the same fields as ``gt_instances``.
- ``pred_instances``: ``InstanceData`` with ``bboxes``, ``scores``, ``labels`` and optionally
  ``masks``, in the coordinates of the original image (``ori_shape``).

Metainfo keys: ``img_path``, ``img_id`` (COCO), ``seg_map_path`` (ADE20K), ``ori_shape`` (H, W) of
the file, ``img_shape`` (H, W) after the pipeline's resize and crop, ``pad_shape`` (H, W) after
batch padding, ``scale_factor`` (w, h) from ori to img, ``flip`` and ``flip_direction``.
"""
from mmengine.structures import BaseDataElement, InstanceData, PixelData

__all__ = ['DataSample', 'InstanceData', 'PixelData']


class DataSample(BaseDataElement):
    """One image's annotations, predictions and metainfo (see the module docstring)."""
