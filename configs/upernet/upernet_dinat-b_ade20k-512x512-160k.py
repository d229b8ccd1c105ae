# UperNet + DiNAT-B (ImageNet-1k, 224, layer scale 1e-5), ADE20K 512x512, 160k, batch 16.
# Target: 49.6 mIoU single-scale (50.4 multi-scale), DiNAT paper (Hassani & Shi, 2022) ADE20K
# UperNet table and the official segmentation model zoo (DiNAT-Base, UPerNet, 123M, 1137G).
# Backbone weights: python tools/convert_checkpoint.py dinat dinat_base_in1k_224.pth \
#     checkpoints/dinat_base_densevit.pth
_base_ = [
    '../_base_/models/upernet_dinat.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, layer_scale=1e-5),
    backbone_checkpoint='checkpoints/dinat_base_densevit.pth')

# 8 GPUs x 2 images = batch 16, as published.
train_dataloader = dict(batch_size=2)

# No weight decay on norms and the relative position biases ('rpb'), as the official config.
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={'rpb': dict(decay_mult=0.0)}))
