# UperNet + ViT-B/16 (MAE ImageNet-1k pre-training) with ViTDet's windowed blocks and simple
# feature pyramid, ADE20K 512x512, 160k iterations, batch 16, layer-wise lr decay 0.65.
# Target: 48.1 mIoU single-scale, MAE paper (He et al., CVPR 2022) Table 5 (ADE20K UperNet,
# ViT-B, MAE pre-training). MAE's head used BEiT's deconvolution pyramid over global-attention
# blocks; this config uses ViTDet's windowed blocks + SFP instead, so expect a small gap.
# Backbone weights: python tools/convert_checkpoint.py mae mae_pretrain_vit_base.pth \
#     checkpoints/mae_vit-b_densevit.pth
_base_ = './upernet_swin-t_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(_delete_=True, type='ViT', arch='base', img_size=512, pretrain_img_size=224,
                  window_size=14, use_rel_pos=True, drop_path_rate=0.1),
    neck=dict(type='SimpleFeaturePyramid', out_channels=768, scale_factors=(4.0, 2.0, 1.0, 0.5)),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341), batch_size=4),
    backbone_checkpoint='checkpoints/mae_vit-b_densevit.pth')

# lr 1e-4 with layer decay 0.65 (the backbone reports each parameter's layer id).
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.65), optimizer=dict(lr=1e-4))
