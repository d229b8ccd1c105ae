# Segmenter, ViT-S/16 (AugReg ImageNet-21k, 384) + linear decoder, ADE20K 512x512, 160k, batch 8.
# Target: about 45 mIoU single-scale for ViT-S/16 + linear decoder (the paper's decoder ablation;
# check the exact table value before quoting).
# Backbone weights: python tools/convert_checkpoint.py segmenter \
#     vit_small_patch16_384.augreg_in21k_ft_in1k.pth checkpoints/vit_small_patch16_384_densevit.pth
_base_ = './segmenter-linear_vit-b_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(arch='small'),
    backbone_checkpoint='checkpoints/vit_small_patch16_384_densevit.pth')
