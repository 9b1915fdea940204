"""ResNet-50 + FPN Faster R-CNN on Pascal VOC 07+12 trainval, tested on VOC 2007 test.

Run:
  python train.py --config=configs/voc_resnet50_fpn.py --workdir=runs/voc_r50 \
    --config.model.pretrained=resnet50.npz

Expected: around 0.80 VOC07 mAP@0.5 from ImageNet weights (torchvision and
detectron2 report 0.80-0.82 for this setting), batch 16 for ~18k steps.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.batch_size = 16
    config.learning_rate = 0.02
    config.reference_batch_size = 16
    config.num_train_steps = 18_000
    config.lr_decay_steps = (12_000, 16_000)
    config.warmup_steps = 1_000
    config.model.backbone = "resnet50_fpn"
    config.model.normalization = "torchvision"
    config.model.rpn_channels = 256
    config.model.roi_hidden = (1024, 1024)
    config.model.roi_op = "align"
    config.model.train_pre_nms_top_n = 2000
    config.model.train_post_nms_top_n = 2000
    config.model.test_pre_nms_top_n = 1000
    config.model.test_post_nms_top_n = 1000
    config.model.roi_num_samples = 512
    config.model.rpn_min_size = 0.0
    config.data.tfds_name = "voc/2007,voc/2012"
    config.data.eval_split = "voc/2007:test"
    config.data.min_size = 800
    config.data.max_size = 1333
    return config
