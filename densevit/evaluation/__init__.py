"""Metrics: COCO box/mask AP, semantic-segmentation IoU and the prompted-mask mIoU."""
from . import coco_metric, iou_metric, prompted_metric  # noqa: F401  (registers modules)
