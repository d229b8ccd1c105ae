"""densevit: transformer backbones and dense-prediction heads, trained and evaluated from configs."""
__version__ = '0.1.0'
