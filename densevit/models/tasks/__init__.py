"""Task models (mmengine BaseModel: loss / predict) that assemble backbone, neck and heads."""
# importing the modules registers them
from . import data_preprocessor, det_data_preprocessor, detector  # noqa: F401
from . import image_encoder, prompted_instance_segmenter, promptable_segmenter  # noqa: F401
from . import sam_data_preprocessor, segmentor  # noqa: F401
