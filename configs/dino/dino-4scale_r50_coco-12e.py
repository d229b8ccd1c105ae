# DINO-4scale, ResNet-50 (ImageNet-1k, torchvision weights), COCO, 12 epochs.
# Target: 49.0 box AP (COCO val2017), IDEA-Research/DINO README, 12-epoch table (DINO-4scale,
# checkpoint0011_4scale.pth); DINO paper (Zhang et al., ICLR 2023) Table 1: 49.0.
# Recipe (config/DINO/DINO_4scale.py, coco_transformer.py): DETR multi-scale augmentation
# (480..800 / crop 384..600, max 1333), batch 16 (8 GPUs x 2), AdamW lr 1e-4, weight decay 1e-4,
# backbone lr 1e-5 (x0.1), clip 0.1, 12 epochs with lr x0.1 after epoch 11; FrozenBatchNorm
# everywhere and the ResNet stem and layer1 frozen (norm_eval, frozen_modules in the base model).
# Deviation: the 91 COCO id slots of the official head become the 80 categories.
# Backbone weights (torchvision's IMAGENET1K_V1, loaded when training starts):
#   python tools/convert_checkpoint.py resnet resnet50-0676ba61.pth \
#       checkpoints/resnet50_densevit.pth
# Released model, for tools/test.py:
#   python tools/convert_checkpoint.py dino checkpoint0011_4scale.pth \
#       checkpoints/dino-4scale_r50_coco-12e.pth
_base_ = [
    '../_base_/models/dino_r50.py',
    '../_base_/datasets/coco_detr.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/detr_adamw_12e.py',
]
model = dict(backbone_checkpoint='checkpoints/resnet50_densevit.pth')

# 8 GPUs x 2 images = batch 16, as published; checkpoints and logs by epoch.
train_dataloader = dict(batch_size=2)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=3))
log_processor = dict(by_epoch=True)
