"""The embedded synthetic shapes dataset with the small backbone: trains on a CPU in minutes.

Run (no download, no accelerator):
  python train.py --config=configs/synthetic.py --workdir=runs/synthetic
  python eval.py --config=configs/synthetic.py --workdir=runs/synthetic

Expected: VOC07 mAP@0.5 0.91-0.95 on the held-out synthetic test split after the 1200 steps
(measured runs: 0.950, 0.953, 0.909; benchmarks/RESULTS.md), in 4-5 minutes on 2 CPU cores.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.num_train_steps = 1200
    config.batch_size = 8
    config.learning_rate = 0.02
    config.reference_batch_size = 8
    config.warmup_steps = 100
    config.lr_decay_steps = (900,)
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.eval_every_steps = 1200
    config.eval_batch_size = 16

    config.model.backbone = "small"
    config.model.backbone_options = {"widths": (32, 64, 128)}
    config.model.image_normalization = "torchvision"
    # Stride 8 (three stages) and anchors of 24..88 px, the objects' sizes: at
    # stride 16 a 25 px object often has no anchor at IoU >= 0.7.
    config.model.anchors.sizes = (24.0, 32.0, 48.0, 64.0, 88.0)
    config.model.rpn.channels = 128
    config.model.rpn.min_size = 8.0
    config.model.rpn.pre_nms_top_n = 1000
    config.model.rpn.post_nms_top_n = 256
    config.model.roi.hidden = (256, 256)
    config.model.roi.op = "align"
    config.model.roi.num_samples = 64
    config.model.test.pre_nms_top_n = 600
    config.model.test.post_nms_top_n = 100

    config.data.name = "synthetic"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.min_size = 128
    config.data.max_size = 128
    config.data.max_boxes = 8
    config.data.shuffle_buffer = 256
    config.data.synthetic = dict(
        num_train=2000,
        num_eval=200,
        image_size=128,
        max_objects=5,
        seed=0,
        min_object_size=20.0,
        max_object_size=90.0,
    )
    return config
