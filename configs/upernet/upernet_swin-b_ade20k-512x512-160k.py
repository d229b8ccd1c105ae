# UperNet + Swin-B (ImageNet-1k, 224, window 7), ADE20K 512x512, 160k iterations, batch 16.
# Target: 48.1 mIoU single-scale (49.7 multi-scale + flip), official Swin-Transformer-Semantic-
# Segmentation model zoo (Swin-B, ImageNet-1K, 512x512, 160K). The Swin paper's Table 3 lists
# Swin-B only with ImageNet-22k pretraining at 640x640 (50.0 / 51.7); 47.6 there is Swin-S.
# Backbone weights: python tools/convert_checkpoint.py swin swin_base_patch4_window7_224.pth \
#     checkpoints/swin_base_densevit.pth
_base_ = './upernet_swin-t_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(arch='base'),
    backbone_checkpoint='checkpoints/swin_base_densevit.pth')
