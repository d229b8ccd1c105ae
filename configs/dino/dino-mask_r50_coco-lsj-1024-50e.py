# Mask DINO (Li et al., CVPR 2023) instance segmentation, ResNet-50 (ImageNet-1k), COCO, LSJ
# 1024, 50 epochs.
# Target: 46.3 mask AP, 51.7 box AP (COCO val2017), IDEA-Research/MaskDINO README (MaskDINO R50,
# 50 epochs, configs/coco/instance-segmentation/maskdino_R50_bs16_50ep_3s_dowsample1_2048.yaml).
# Recipe (that yaml + Base-COCO-InstanceSegmentation.yaml): large-scale jitter (flip, scale
# 0.1..2.0 of 1024, 1024 crop), test at short side 800 (max 1333), batch 16 (8 GPUs x 2), AdamW
# lr 1e-4, weight decay 0.05 (none on norms and embeddings), backbone lr x0.1, full-model clip
# 0.01, 368,750 iterations with lr x0.1 at 327,778 and 355,092, mixed precision (use --amp);
# detectron2's ResNet defaults: FrozenBatchNorm everywhere (RESNETS.NORM 'FrozenBN', so norm_eval)
# and FREEZE_AT 0, which in detectron2's build_resnet_backbone freezes neither the stem (>= 1)
# nor any stage (res2 at >= 2): every convolution trains (frozen_modules empty); encoder on
# s8..s32 + one extra level, FFN 2048 in encoder and decoder, 300 queries, 9 decoder layers,
# denoising 100 (box noise 0.4, label noise 0.2), losses class 4, L1 5, GIoU 2, mask BCE 5,
# dice 5 (12544 points), 100 per image.
# Deviations: the DINO head uses learned content queries and no mask-enhanced box
# initialisation (Mask DINO takes both from the encoder's selected proposals), scores
# detections by class only, and reads the s4 map through the ChannelMapper's projection; expect
# a gap to 46.3 / 51.7. Padding: Mask DINO's FixedSizeCrop pads each raw crop to 1024 with 128
# (so the model sees the border as image); here the batch is padded to 1024 after normalisation
# with 0 and the border is masked as padding (DetDataPreprocessor size=(1024, 1024)).
# Backbone weights (torchvision's IMAGENET1K_V1, as detectron2's ImageNetPretrained/torchvision/
# R-50.pkl, which the resnet converter reads too; loaded when training starts):
#   python tools/convert_checkpoint.py resnet resnet50-0676ba61.pth \
#       checkpoints/resnet50_densevit.pth
# No converter reads Mask DINO's released checkpoints yet.
_base_ = [
    '../_base_/models/dino_r50.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/default_runtime.py',
    '../_base_/schedules/maskdino_adamw_368k.py',
]
model = dict(
    data_preprocessor=dict(size=(1024, 1024), size_divisor=32),  # size: training batches only
    backbone=dict(out_indices=(1, 2, 3, 4), frozen_modules=()),  # FREEZE_AT 0
    neck=dict(in_features=('s4', 's8', 's16', 's32')),
    head=dict(
        with_masks=True, mask_in_features=('s4',), num_queries=300, num_decoder_layers=9,
        dn_label_noise_ratio=0.2, dn_box_noise_scale=0.4, pos_temperature=10000.0,
        inverse_sigmoid_eps=1e-5,
        criterion=dict(
            _delete_=True, type='SetCriterion', num_points=12544, oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            weights=dict(cls=4.0, bbox=5.0, giou=2.0, mask=5.0, dice=5.0),
            matcher=dict(type='HungarianMatcher', class_cost='focal', cost_class=4.0,
                         cost_bbox=5.0, cost_giou=2.0, cost_mask=5.0, cost_dice=5.0))),
    test_cfg=dict(max_per_img=100),
    backbone_checkpoint='checkpoints/resnet50_densevit.pth')

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='ClipBoxes'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='LargeScaleJitter', scale=(1024, 1024), ratio_range=(0.1, 2.0)),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomChoiceResize', scales=[800], max_size=1333),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(filter_cfg=dict(min_size=0),
                                                   pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
default_hooks = dict(checkpoint=dict(interval=5000))
