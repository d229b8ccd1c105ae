"""Backbones: each returns named multi-scale feature maps (see densevit.models.contract)."""
from . import nat, swin, timm_backbone, vit  # noqa: F401  (registers modules)
