"""DETR-family detection heads and their parts: the Hungarian matcher, the set criterion and
DINO's contrastive denoising; the heads themselves follow."""
from . import criterion, denoising, matcher  # noqa: F401  (registers modules)
from . import detr, mask_branch, position_encoding  # noqa: F401
from . import deformable_detr, deformable_transformer, dino  # noqa: F401
