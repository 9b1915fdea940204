"""A tiny synthetic-data config shared by the training tests (compiles and steps fast on CPU)."""

from configs import synthetic


def tiny_config(**overrides):
    config = synthetic.get_config()
    config.num_train_steps = 4
    config.batch_size = 2
    config.log_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    config.eval_batch_size = 2
    config.warmup_steps = 1
    config.lr_decay_steps = (3,)
    config.model.backbone_options = {"widths": (8, 8, 16, 16)}
    config.model.rpn.channels = 16
    config.model.rpn.pre_nms_top_n = 200
    config.model.rpn.post_nms_top_n = 64
    config.model.rpn.num_samples = 64
    config.model.roi.hidden = (32, 32)
    config.model.roi.num_samples = 16
    config.model.test.pre_nms_top_n = 100
    config.model.test.post_nms_top_n = 32
    config.data.min_size = 64
    config.data.max_size = 64
    config.data.max_boxes = 4
    config.data.shuffle_buffer = 16
    config.data.synthetic = dict(
        num_train=16,
        num_eval=4,
        image_size=64,
        max_objects=3,
        min_object_size=16.0,
        max_object_size=48.0,
    )
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config
