# Segmenter, ViT-S/16 (AugReg ImageNet-21k, 384) + linear decoder,
# ADE20K 512x512, 160k iterations, batch 8, SGD as the official recipe.
# Target: about 45 mIoU single-scale for ViT-S/16 + linear decoder (the paper's decoder ablation,
# check the exact table value before quoting).
# Backbone weights: python tools/convert_checkpoint.py timm_vit \
#     vit_small_patch16_384.augreg_in21k_ft_in1k.pth \
#     checkpoints/vit_small_patch16_384_densevit.pth
_base_ = [
    '../_base_/models/segmenter_vit.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/schedule_160k.py',
]
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.1),
    decode_head=dict(type='SegmenterLinearHead', in_features=('s16',), num_classes=150,
                     input_norm=False),
    backbone_checkpoint='checkpoints/vit_small_patch16_384_densevit.pth')

# Batch 8 as published: 1 image per GPU on 8 GPUs (scale to your setup).
train_dataloader = dict(batch_size=1)

# Official Segmenter: SGD, lr 1e-3, momentum 0.9, no weight decay, poly decay (power 0.9), no
# warmup (these lists replace the base schedule's).
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-5, power=0.9, by_epoch=False, begin=0, end=160000),
]
