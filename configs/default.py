"""Defaults shared by every config: the seed's (simple-faster-rcnn-pytorch) VGG16 hyperparameters.

Not meant to be run directly; the runnable configs import it and override fields.
"""

import ml_collections

from frcnn_jax.models import build


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_train_steps = 70_000
    config.batch_size = 1  # global, over all devices and hosts
    # lr at reference_batch_size; the run uses learning_rate * batch_size / reference_batch_size.
    config.learning_rate = 1e-3
    config.reference_batch_size = 1
    config.optimizer = "sgd"  # or "adamw" (momentum is then its b1)
    config.momentum = 0.9
    config.weight_decay = 5e-4  # VGG16's; 1e-4 for ResNet-FPN (torchvision, detectron2)
    config.bias_lr_factor = 1.0  # biases (and GroupNorm scales) learn at this x lr; the seed: 2
    config.warmup_steps = 500
    config.lr_decay_steps = (45_000,)  # x0.1 after 9 of 14 epochs of VOC07 trainval
    # "step": x0.1 at each lr_decay_steps (the seed); "cosine": from the end of the warmup
    # down to ~0 at the last step, lr_decay_steps / lr_decay_epochs unused.
    config.lr_schedule = "step"
    # A schedule in epochs (frcnn_jax/training/schedule.py): when num_epochs is set, the run's
    # steps, lr_decay_steps (from lr_decay_epochs) and, with warmup_epochs, warmup_steps are
    # computed from the number of training images and batch_size at start (and logged); the
    # step fields above are then ignored. None: the step fields are used as they are.
    config.num_epochs = ml_collections.config_dict.placeholder(float)
    config.lr_decay_epochs = ()
    config.warmup_epochs = ml_collections.config_dict.placeholder(float)
    config.log_every_steps = 50
    config.checkpoint_every_steps = 5_000
    config.keep_checkpoints = 3
    config.eval_every_steps = 0  # 0: no evaluation during training; eval.py evaluates
    config.eval_batch_size = 8
    config.distributed = False  # jax.distributed.initialize() for multi-host runs

    # backbone, backbone_options, image_normalization, dtype, pretrained, and the groups
    # anchors.*, rpn.*, roi.*, test.* (frcnn_jax/models/options.py documents each field).
    config.model = build.default_model_config()

    config.data = ml_collections.ConfigDict()
    config.data.name = "tfds"
    config.data.tfds_name = "voc/2007"
    config.data.train_split = "train+validation"
    config.data.eval_split = "test"
    config.data.tfds_data_dir = ml_collections.config_dict.placeholder(str)
    config.data.root = ""  # voc_dir: the folder in VOC layout
    config.data.classes = ""  # voc_dir: "a,b,c"; empty: ROOT/classes.txt, else the XMLs' names
    # coco_json: annotation files of data.train_split / data.eval_split, and the folder that
    # each image's "file_name" is relative to.
    config.data.train_annotations = ""
    config.data.eval_annotations = ""
    config.data.images = ""
    config.data.min_size = 600
    config.data.max_size = 1000
    config.data.max_boxes = 64
    config.data.flip = True
    config.data.exclude_difficult = True
    config.data.skip_empty = True
    config.data.shuffle_buffer = 1024
    return config
