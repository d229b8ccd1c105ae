# UperNet + DiNAT-B (ImageNet-1k, 224, layer scale 1e-5), ADE20K 512x512, 160k, batch 16.
# Target: 49.6 mIoU single-scale (50.4 multi-scale), DiNAT paper (Hassani & Shi, 2022) ADE20K
# UperNet table and the official segmentation model zoo (DiNAT-Base, UPerNet, 123M, 1137G).
# Backbone weights: python tools/convert_checkpoint.py dinat dinat_base_in1k_224.pth \
#     checkpoints/dinat_base_densevit.pth
_base_ = './upernet_dinat-t_ade20k-512x512-160k.py'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5, layer_scale=1e-5),
    backbone_checkpoint='checkpoints/dinat_base_densevit.pth')
