"""Necks: feature dict in, feature dict out (see densevit.models.contract)."""
from . import channel_mapper, sam_neck, simple_feature_pyramid  # noqa: F401  (registers modules)
