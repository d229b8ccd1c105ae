# DINO-4scale, DiNAT-T (ImageNet-1k, 224), COCO, 12 epochs.
# Target: none published. No DINO + DiNAT result exists (the DiNAT paper reports Mask R-CNN and
# Cascade Mask R-CNN only: DiNAT-T Mask R-CNN 3x 48.6 box AP). This config runs the detrex
# Swin-T recipe with DiNAT-T swapped in, so DINO Swin-T's 51.3 box AP is the bar to compare with.
# Recipe: the Swin-T config's (DETR multi-scale augmentation, batch 16, AdamW lr 1e-4, wd 1e-4,
# backbone lr x0.1, clip 0.1, 90k iterations, lr x0.1 at 82.5k, detrex's DINO head) with
# DiNAT-T as the official COCO detection configs set it (kernel 7, drop path 0.2, the COCO
# dilations of SHI-Labs' mask_rcnn_dinat_tiny_3x_coco.py), levels s8..s32.
# Backbone weights: python tools/convert_checkpoint.py dinat dinat_tiny_in1k_224.pth \
#     checkpoints/dinat_tiny_densevit.pth
_base_ = './dino-4scale_swin-t_coco-12e.py'
model = dict(
    backbone=dict(_delete_=True, type='DiNAT', arch='tiny', kernel_size=7, drop_path_rate=0.2,
                  out_indices=(1, 2, 3),
                  dilations=[[1, 28, 1], [1, 7, 1, 14],
                             [1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7, 1, 3, 1, 5, 1, 7],
                             [1, 3, 1, 3, 1]]),
    backbone_checkpoint='checkpoints/dinat_tiny_densevit.pth')
