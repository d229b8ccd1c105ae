# UperNet + Swin-T (ImageNet-1k, 224, window 7), ADE20K 512x512, 160k iterations, batch 16.
# Target: 44.5 mIoU single-scale (45.8 multi-scale + flip), Swin paper (Liu et al., ICCV 2021)
# Table 3 (ADE20K val); the official Swin-Transformer-Semantic-Segmentation model zoo agrees.
# Backbone weights: python tools/convert_checkpoint.py swin swin_tiny_patch4_window7_224.pth \
#     checkpoints/swin_tiny_densevit.pth
_base_ = [
    '../_base_/models/upernet.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]
model = dict(backbone_checkpoint='checkpoints/swin_tiny_densevit.pth')

# 8 GPUs x 2 images = batch 16, as published.
train_dataloader = dict(batch_size=2)

# Multi-scale + flip evaluation (expected +1.3 mIoU):
#   --cfg-options "model.test_cfg.tta.scales=[0.5,0.75,1.0,1.25,1.5,1.75]" model.test_cfg.tta.flip=True
