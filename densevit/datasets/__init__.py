"""COCO and ADE20K readers, albumentations-based transforms and the synthetic stand-in sets."""
from . import ade20k, coco, transforms  # noqa: F401  (registers modules)
