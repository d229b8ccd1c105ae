# UperNet on a randomly initialised ResNet-18 (timm, through TimmBackbone), trained from scratch
# on the synthetic ADE20K stand-in on CPU: what `make demo` trains. On the stand-in, classes
# differ by shape (things) and by texture and place (stuff), never by colour; of the backbones
# measured for this budget (BENCHMARKS.md, "Quickstart candidates"), the small CNN learned
# fastest: 400 training iterations of a from-scratch ViT barely leave the class prior.
# Reaches val mIoU 45.5 on the stand-in (24 epochs, 600 iterations; 35.6 after 12; the previous
# ViT-tiny recipe reaches 12.4 on the same data); the same images with every colour redrawn score
# 44.7. Within this budget it learns the stuff classes (textures and places) and begins on the
# outlines of the thing classes (person 26.9 IoU; bed, chair and car still 0). Training takes
# 4.7 min in `make demo` on 2 quiet cores (0.47 s per iteration of 8 images).
# No auxiliary head: at 150 classes the loss on full-resolution logits costs as much as the
# model, and the CPU budget is better spent on epochs.
_base_ = [
    '../_base_/default_runtime.py',
    '../_base_/datasets/ade20k_quickstart.py',
    '../_base_/schedules/quickstart_cpu.py',
]
model = dict(
    type='Segmentor',
    # training crops (at most 128x128; RandomCrop does not pad) padded to 128 after normalisation
    data_preprocessor=dict(type='SegDataPreprocessor', size=(128, 128), size_divisor=32),
    backbone=dict(type='TimmBackbone', model_name='resnet18'),
    decode_head=dict(type='UPerHead', in_features=('s4', 's8', 's16', 's32'), channels=64,
                     num_classes=150),
    test_cfg=dict(mode='whole'))

max_epochs = 24
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=10, log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval=max_epochs, max_keep_ckpts=1))
log_processor = dict(by_epoch=True)
