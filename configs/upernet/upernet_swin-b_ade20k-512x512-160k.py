# UperNet + Swin-B (ImageNet-1k, 224, window 7), ADE20K 512x512, 160k iterations, batch 16.
# Target: 48.1 mIoU single-scale (49.7 multi-scale + flip), official Swin-Transformer-Semantic-
# Segmentation model zoo (Swin-B, ImageNet-1K, 512x512, 160K). The Swin paper's Table 3 lists
# Swin-B only with ImageNet-22k pretraining at 640x640 (50.0 / 51.7); 47.6 there is Swin-S.
# Backbone weights: python tools/convert_checkpoint.py swin swin_base_patch4_window7_224.pth \
#     checkpoints/swin_base_densevit.pth
_base_ = [
    '../_base_/models/upernet_swin.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]
model = dict(
    backbone=dict(arch='base', window_size=7, drop_path_rate=0.3),
    backbone_checkpoint='checkpoints/swin_base_densevit.pth')

# 8 GPUs x 2 images = batch 16, as published.
train_dataloader = dict(batch_size=2)

# No weight decay on norms and the relative position bias tables (official recipe).
optim_wrapper = dict(
    optimizer=dict(lr=6e-5, weight_decay=0.01),
    paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.0)}))
