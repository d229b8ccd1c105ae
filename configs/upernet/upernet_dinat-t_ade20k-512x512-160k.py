# UperNet + DiNAT-T (ImageNet-1k, 224), ADE20K 512x512, 160k iterations, batch 16.
# Target: 47.8 mIoU single-scale (48.8 multi-scale), DiNAT paper (Hassani & Shi, 2022) ADE20K
# UperNet table and the official segmentation model zoo (DiNAT-Tiny, UPerNet, 58M, 934G).
# Backbone weights: python tools/convert_checkpoint.py dinat dinat_tiny_in1k_224.pth \
#     checkpoints/dinat_tiny_densevit.pth
_base_ = [
    '../_base_/models/upernet_dinat.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]
model = dict(
    backbone=dict(arch='tiny', drop_path_rate=0.3),
    backbone_checkpoint='checkpoints/dinat_tiny_densevit.pth')

# 8 GPUs x 2 images = batch 16, as published.
train_dataloader = dict(batch_size=2)

# No weight decay on norms and the relative position biases ('rpb'), as the official config.
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'rpb': dict(decay_mult=0.0)}))
