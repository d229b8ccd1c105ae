# Detector boxes as SAM prompts: the quickstart DINO's boxes prompt the quickstart SAM decoder,
# whose masks replace DINO's own; scored by CocoMetric (box and mask AP) on the stand-in val
# split. Nothing is trained here: train the two quickstarts first, into the work dirs named
# below, then evaluate without a checkpoint of its own:
#   python tools/train.py configs/quickstart/dino_vit-tiny_coco.py --work-dir work_dirs/demo-dino
#   python tools/train.py configs/quickstart/sam_vit-tiny_coco.py --work-dir work_dirs/demo-sam
#   python tools/test.py configs/quickstart/dino-sam_vit-tiny_coco.py
# Any Detector config (a box-only one too) and any PromptableSegmenter config pair the same way.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/coco_quickstart.py',
]
model = dict(
    type='PromptedInstanceSegmenter',
    detector='configs/quickstart/dino_vit-tiny_coco.py',
    segmenter='configs/quickstart/sam_vit-tiny_coco.py',
    detector_checkpoint='work_dirs/demo-dino',
    segmenter_checkpoint='work_dirs/demo-sam',
    test_cfg=dict(prompt_batch=64))
train_dataloader = None
train_cfg = None
optim_wrapper = None
val_dataloader = None
val_cfg = None
val_evaluator = None
test_cfg = dict(type='TestLoop')
