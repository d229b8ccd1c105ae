"""Python entry points: read configs, build models with weights, run them on images."""
from .automatic_mask_generator import SamAutomaticMaskGenerator
from .config import load_config
from .inference import inference_model, init_model
from .sam_predictor import SamPredictor

__all__ = ['load_config', 'init_model', 'inference_model', 'SamPredictor',
           'SamAutomaticMaskGenerator']
