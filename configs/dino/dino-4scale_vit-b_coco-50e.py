# DINO-4scale, ViT-B/16 (MAE) + simple feature pyramid, COCO, 50 epochs, detrex recipe.
# Target: 55.0 box AP (COCO val2017), IDEA-Research/detrex projects/dino README
# (DINO-ViTDet-Base-4scale, 50 epochs).
# Recipe (projects/dino/configs/dino-vitdet/dino_vitdet_base_4scale_50ep.py): the 12-epoch
# config's (DETR multi-scale augmentation, AdamW lr 1e-4, wd 1e-4, backbone and pyramid lr x0.1,
# clip 0.1, pyramid then ChannelMapper) with detrex's 50-epoch schedule: 375k iterations at batch
# 16, lr x0.1 at 300k.
# Backbone weights: python tools/convert_checkpoint.py mae mae_pretrain_vit_base.pth \
#     checkpoints/mae_vit-b_densevit.pth
# Released model, for tools/test.py:
#   python tools/convert_checkpoint.py dino dino_vitdet_base_4scale_50ep.pth \
#       checkpoints/dino-4scale_vit-b_coco-50e.pth
_base_ = './dino-4scale_vit-b_coco-12e.py'
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, milestones=[300000], gamma=0.1, begin=0,
         end=375000),
]
train_cfg = dict(max_iters=375000)
