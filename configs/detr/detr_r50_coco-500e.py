# DETR, ResNet-50 (ImageNet-1k, torchvision weights), COCO, 500 epochs.
# Target: 42.0 box AP (COCO val2017), facebookresearch/detr README model zoo (DETR R50, 500
# epochs, detr-r50-e632da11.pth); DETR paper (Carion et al., ECCV 2020) Table 1: 42.0.
# Recipe (main.py defaults, README, paper section 4): DETR multi-scale augmentation, batch 64
# (16 GPUs x 4), AdamW lr 1e-4, weight decay 1e-4, backbone lr 1e-5 (x0.1), clip 0.1, dropout
# 0.1, 500 epochs with lr x0.1 after epoch 400; FrozenBatchNorm everywhere and the ResNet stem
# and layer1 frozen (norm_eval, frozen_modules in the base model).
# Backbone weights (torchvision's IMAGENET1K_V1, loaded when training starts):
#   python tools/convert_checkpoint.py resnet resnet50-0676ba61.pth \
#       checkpoints/resnet50_densevit.pth
# No converter reads DETR's released checkpoint yet (the head keeps its keys: drop backbone.*,
# prefix the rest with head.).
_base_ = [
    '../_base_/models/detr_r50.py',
    '../_base_/datasets/coco_detr.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/detr_adamw_500e.py',
]
model = dict(backbone_checkpoint='checkpoints/resnet50_densevit.pth')

train_dataloader = dict(batch_size=4)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=10, max_keep_ckpts=3))
log_processor = dict(by_epoch=True)
