# 160k-iteration AdamW schedule for ADE20K 512x512 (the Swin / DiNAT UperNet recipe): lr 6e-5,
# weight decay 0.01, linear warmup over 1500 iterations, then poly decay (power 1.0) to 0 at 160k;
# validation and checkpoints every 16k. No weight decay on the backbone's norm layers and on the
# position tables it names (Swin's relative_position_bias_table, NAT's rpb), as the official
# configs' custom_keys 'norm' / 'relative_position_bias_table' / 'rpb' give it; biases and the
# heads' BatchNorms (named 'bn' in mmseg, so 'norm' misses them) keep it.
# (layer_decay_rate 1.0 = no depth decay; ViT configs set 0.65 and their own no_decay.)
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    paramwise_cfg=dict(layer_decay_rate=1.0, no_decay=('backbone_norm', 'tables')),
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, by_epoch=False, begin=1500, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
