# Fine-tune the official SAM ViT-B's prompt encoder and mask decoder on COCO 2017 instances, the
# image encoder (ViT-B + neck) frozen, with SAM's interactive training (SAM paper, appendix A):
# per instance a first prompt (a point uniform in the mask, or the mask's box with noise of up to
# 10% of its side, at most 20 px, each with probability 0.5), then 8 corrective clicks from the
# previous prediction's error region with its logits fed back, and 2 iterations that feed back
# the logits without a click (one among the clicks, one at the end): 11 decoder passes per
# instance; focal : dice : IoU-MSE = 20 : 1 : 1.
# Up to 32 instances per image (64 per GPU at 2 images, SAM's count). Optimiser: SAM's AdamW
# (betas 0.9 / 0.999, weight decay 0.1, 250 warmup iterations, lr x0.1 at 2/3 and 26/27 of the
# run) with SAM's lr 8e-4 at batch 256 scaled linearly to batch 16 (8 GPUs x 2): 5e-5, for 90k
# iterations (~12 COCO epochs). Evaluated by PromptedIoUMetric: mIoU over all val2017 instances
# for segment-anything-fast's 1 point, the gt box, and 1 / 3 / 5 corrective clicks.
# No published number exists for this recipe. For the model before fine-tuning, segment-anything-
# fast's experiments/results.csv gives 1-point mIoU 0.534 for the official ViT-B (fp32) on COCO
# val2017, over all 4952 images with annotations, crowd regions included; this evaluator skips
# the crowd regions (they are not instances), so its 1-point number is close to, not equal to,
# that one: `python tools/test.py configs/sam/sam_vit-b_coco-finetune.py work_dirs/sam_vit-b.pth`.
# Weights: the official sam_vit_b_01ec64.pth converted by
#   python tools/convert_checkpoint.py sam sam_vit_b_01ec64.pth work_dirs/sam_vit-b.pth --config configs/sam/sam_vit-b.py
# Losses are taken on the logits upsampled to the 1024 px input, so memory grows with instances:
# lower max_instances on GPUs under 40 GB.
_base_ = [
    './sam_vit-b.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py',
]
model = dict(
    train_cfg=dict(freeze_image_encoder=True, max_instances=32, box_prob=0.5, num_clicks=8,
                   refine_iterations=2),
    test_cfg=dict(modes=('1-point', '1-box', '1-click', '3-click', '5-click')))
load_from = 'work_dirs/sam_vit-b.pth'
# a step may leave the box-corner or padding-point embeddings unused on one process
find_unused_parameters = True

# SamDataPreprocessor resizes the longer side to 1024 and pads to the square, so the pipelines
# only load and flip
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='PromptedIoUMetric')
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.1))
max_iters = 90000
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=250),
    dict(type='MultiStepLR', by_epoch=False, milestones=[60000, 86667], gamma=0.1, begin=0,
         end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=10000, max_keep_ckpts=3))
