"""Task models (mmengine BaseModel: loss / predict) that assemble backbone, neck and heads."""
from . import data_preprocessor, image_encoder, segmentor  # noqa: F401  (registers modules)
