# COCO 2017 boxes with DETR's multi-scale augmentation (facebookresearch/detr datasets/coco.py,
# unchanged in Deformable DETR, DINO and detrex): horizontal flip, then with probability 1/2
# either a short-side resize to 480..800 (step 32, long side <= 1333) or a short-side resize to
# 400 / 500 / 600, a random crop with sides in [384, 600] and the same 480..800 resize.
# Test: short side 800, long side <= 1333. Boxes are clipped to the image on loading and empty
# ones dropped (DETR's ConvertCocoPolysToMask); crowd boxes are kept out of the targets.
# Images without annotations stay in (torchvision's CocoDetection keeps all 118k); detrex's
# detectron2 loader drops them: its configs set filter_cfg.filter_empty_gt=True.
# Every path, the evaluator's annotation file included, follows data_root.
dataset_type = 'CocoDataset'
data_root = 'data/coco/'
detr_scales = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='ClipBoxes'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=detr_scales, max_size=1333)],
        [dict(type='RandomChoiceResize', scales=[400, 500, 600]),
         dict(type='RandomSizeCrop', min_size=384, max_size=600),
         dict(type='RandomChoiceResize', scales=detr_scales, max_size=1333)],
    ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomChoiceResize', scales=[800], max_size=1333),
    dict(type='LoadAnnotations', with_bbox=True),  # after the resize: boxes stay at file size
    dict(type='PackDetInputs'),
]

train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=False, min_size=0),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric=['bbox'])
test_evaluator = val_evaluator
