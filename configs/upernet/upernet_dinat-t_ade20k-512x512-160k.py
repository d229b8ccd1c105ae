# UperNet + DiNAT-T (ImageNet-1k, 224), ADE20K 512x512, 160k iterations, batch 16.
# Target: 47.8 mIoU single-scale (48.8 multi-scale), DiNAT paper (Hassani & Shi, 2022) ADE20K
# UperNet table and the official segmentation model zoo (DiNAT-Tiny, UPerNet, 58M, 934G).
# Backbone weights: python tools/convert_checkpoint.py dinat dinat_tiny_in1k_224.pth \
#     checkpoints/dinat_tiny_densevit.pth
_base_ = './upernet_swin-t_ade20k-512x512-160k.py'
# The official ADE20K dilations (feature maps 128x128 .. 16x16 for 512x512 crops).
model = dict(
    backbone=dict(_delete_=True, type='DiNAT', arch='tiny', kernel_size=7, drop_path_rate=0.3,
                  dilations=[[1, 16, 1], [1, 4, 1, 8],
                             [1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4, 1, 2, 1, 3, 1, 4],
                             [1, 2, 1, 2, 1]]),
    backbone_checkpoint='checkpoints/dinat_tiny_densevit.pth')
