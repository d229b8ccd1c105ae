# The official Segmenter recipe: SGD, lr 1e-3, momentum 0.9, no weight decay, poly decay
# (power 0.9) to 1e-5 over 160k iterations, no warmup.
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-5, power=0.9, by_epoch=False, begin=0, end=160000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
