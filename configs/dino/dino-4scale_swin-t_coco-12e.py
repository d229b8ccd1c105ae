# DINO-4scale, Swin-T (ImageNet-1k, 224, window 7), COCO, 12 epochs, detrex recipe.
# Target: 51.3 box AP (COCO val2017), IDEA-Research/detrex projects/dino README
# (DINO-Swin-T-224-4scale, IN1k, 12 epochs, 100 denoising queries).
# Recipe (projects/dino/configs/dino-swin/dino_swin_tiny_224_4scale_12ep.py): DETR multi-scale
# augmentation (480..800 / crop 384..600, max 1333), images without boxes dropped, total batch
# 16, AdamW lr 1e-4, weight decay 1e-4 (none on norms), backbone lr x0.1, clip 0.1, 90k
# iterations (lr x0.1 at 82.5k); Swin drop path 0.1, s8..s32 + one extra level; detrex's DINO:
# sine positions with temperature 10000 and offset -0.5, box noise 1.0, one class / box head per
# decoder layer, 300 detections per image.
# Backbone weights: python tools/convert_checkpoint.py swin swin_tiny_patch4_window7_224.pth \
#     checkpoints/swin_tiny_densevit.pth
# The released model (dino_swin_tiny_224_4scale_12ep.pth) has no converter yet: `dino` reads
# detrex checkpoints with ResNet and ViTDet backbones only.
_base_ = [
    '../_base_/models/dino_r50.py',
    '../_base_/datasets/coco_detr.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/detrex_adamw_90k.py',
]
model = dict(
    backbone=dict(_delete_=True, type='Swin', arch='tiny', window_size=7, drop_path_rate=0.1,
                  out_indices=(1, 2, 3)),
    head=dict(pos_temperature=10000.0, pos_offset=-0.5, dn_box_noise_scale=1.0,
              share_pred_layers=False),
    backbone_checkpoint='checkpoints/swin_tiny_densevit.pth')

# 8 GPUs x 2 = batch 16; detectron2's loader drops images without annotations.
train_dataloader = dict(batch_size=2, sampler=dict(type='InfiniteSampler', shuffle=True),
                        dataset=dict(filter_cfg=dict(filter_empty_gt=True)))
default_hooks = dict(checkpoint=dict(interval=5000))
