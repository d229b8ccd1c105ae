# DINO-4scale, ViT-B/16 (MAE ImageNet-1k pre-training) with ViTDet's windowed blocks and simple
# feature pyramid, COCO, 12 epochs, detrex recipe.
# Target: 50.2 box AP (COCO val2017), IDEA-Research/detrex projects/dino README
# (DINO-ViTDet-Base-4scale, 12 epochs).
# Recipe (projects/dino/configs/dino-vitdet/dino_vitdet_base_4scale_12ep.py, models/dino_vitdet.py):
# the Swin-T config's (DETR multi-scale augmentation, batch 16, AdamW lr 1e-4, wd 1e-4, 90k
# iterations, lr x0.1 at 82.5k, clip 0.1, detrex's DINO head) with ViT-B (window 14, global
# blocks 2/5/8/11, relative positions, drop path 0.1) and a pyramid s8..s64 (scale factors 2, 1,
# 0.5 + max-pool, 256 channels, LayerNorm), then detrex's ChannelMapper (1x1 conv + GN per level,
# no extra level): two necks in a row. The pyramid is part of detrex's backbone, so it also gets
# lr x0.1; the ChannelMapper gets the full lr. No layer-wise lr decay and no large-scale jitter:
# those belong to ViTDet's Mask R-CNN and detrex's DINO-EVA recipes, not to this number.
# Backbone weights: python tools/convert_checkpoint.py mae mae_pretrain_vit_base.pth \
#     checkpoints/mae_vit-b_densevit.pth
# Released model, for tools/test.py:
#   python tools/convert_checkpoint.py dino dino_vitdet_4scale_12ep.pth \
#       checkpoints/dino-4scale_vit-b_coco-12e.pth
_base_ = './dino-4scale_swin-t_coco-12e.py'
model = dict(
    data_preprocessor=dict(size_divisor=64),  # pyramid levels stay ceil(H / stride)
    backbone=dict(_delete_=True, type='ViT', arch='base', img_size=1024, pretrain_img_size=224,
                  window_size=14, use_rel_pos=True, drop_path_rate=0.1),
    neck=[  # neck.0, neck.1
        dict(type='SimpleFeaturePyramid', in_feature='s16', out_channels=256,
             scale_factors=(2.0, 1.0, 0.5), top_block=True),
        dict(type='ChannelMapper', in_features=('s8', 's16', 's32', 's64'), out_channels=256,
             num_extra_levels=0)],
    backbone_checkpoint='checkpoints/mae_vit-b_densevit.pth')

optim_wrapper = dict(paramwise_cfg=dict(custom_keys={'neck.0.': dict(lr_mult=0.1)}))
