# Segmenter, ViT-S/16 (AugReg ImageNet-21k, 384) + mask transformer decoder (2 layers, d_model
# 384, 6 heads, dropout 0.1), ADE20K 512x512, 160k iterations, batch 8, SGD (official recipe).
# Target: 45.3 mIoU single-scale (46.9 multi-scale), Seg-S-Mask/16 in the official model zoo
# (check against the paper).
_base_ = './segmenter-mask_vit-b_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(arch='small'),
    decode_head=dict(channels=384, num_heads=6),
    backbone_checkpoint='checkpoints/vit_small_patch16_384_densevit.pth')
