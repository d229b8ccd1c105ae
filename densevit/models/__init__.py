"""Backbones, necks, heads, losses and task models; importing this registers them all."""
from . import backbones, heads, losses, necks, tasks  # noqa: F401  (registers modules)
from .contract import Backbone, FeatureSpec

__all__ = ['Backbone', 'FeatureSpec']
