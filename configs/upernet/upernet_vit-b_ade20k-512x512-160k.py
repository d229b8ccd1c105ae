# UperNet + ViT-B/16 (MAE ImageNet-1k pre-training) with ViTDet's windowed blocks and simple
# feature pyramid, ADE20K 512x512, 160k iterations, batch 16.
# Target: 48.1 mIoU single-scale, MAE paper (He et al., CVPR 2022) Table 5 (ADE20K UperNet,
# ViT-B, MAE pre-training).
# Recipe: MAE's ADE20K fine-tuning (it used BEiT's semantic-segmentation code): UperNet with
# SyncBN, AdamW lr 1e-4, weight decay 0.05, layer-wise lr decay 0.65, drop path 0.1, 160k
# iterations at batch 16 with the Swin schedule's warmup and poly decay, 512 crops, sliding-window
# test (512 windows, stride 341). The backbone is ViTDet's instead of BEiT's (MAE's head used
# BEiT's deconvolution pyramid over global-attention blocks), so expect a small gap: windowed
# blocks with global attention in blocks 2, 5, 8, 11, decomposed relative positions, and the
# simple feature pyramid for s4..s32. Weight-decay exemptions as ViTDet's: norm layers and the
# absolute position embedding; biases and the relative-position tables decay. (Every norm layer
# here, the pyramid's included; ViTDet's rule, matching torch's norm classes, misses its
# pyramid's LayerNorm, which is detectron2's own class.)
# Window 16 (ViTDet uses 14 at 1024, padding its 64x64 map to 70x70): 16 tiles the 32x32 map of a
# 512 crop into 2x2 windows with no padded slots (14 would pad 32 to 42: 42% of the slots), and it
# is the divisor of 32 closest to the 14x14 grid each token saw in 224-px pre-training, the
# reason ViTDet gives for 14. (8 also tiles, at a quarter of that context.)
# Backbone weights: python tools/convert_checkpoint.py mae mae_pretrain_vit_base.pth \
#     checkpoints/mae_vit-b_densevit.pth
_base_ = './upernet_swin-t_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(_delete_=True, type='ViT', arch='base', img_size=512, pretrain_img_size=224,
                  window_size=16, use_rel_pos=True, drop_path_rate=0.1),
    neck=dict(type='SimpleFeaturePyramid', out_channels=768, scale_factors=(4.0, 2.0, 1.0, 0.5)),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341), batch_size=4),
    backbone_checkpoint='checkpoints/mae_vit-b_densevit.pth')

# lr 1e-4, weight decay 0.05, layer decay 0.65 (the backbone reports each parameter's layer id).
optim_wrapper = dict(
    paramwise_cfg=dict(layer_decay_rate=0.65, no_decay=('norm', 'pos_embed')),
    optimizer=dict(lr=1e-4, weight_decay=0.05))
