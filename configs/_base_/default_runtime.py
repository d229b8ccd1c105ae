# Runtime settings shared by every config: scope, environment, hooks, logging.
default_scope = 'densevit'

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),  # CPU runs switch to gloo in densevit.engine.launch
)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)

vis_backends = [dict(type='LocalVisBackend')]
# No fixed ``name``: mmengine then names the visualizer after the run (config name and start
# time), so a second Runner in the same process (train, then test; a notebook) gets its own, with
# its own backends and work dir, instead of reusing the first run's.
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
randomness = dict(seed=0)
load_from = None
resume = False
