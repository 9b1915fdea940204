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
    # torchvision's and detectron2's recipe for ResNet-FPN (VGG16's 5e-4 stays in default.py).
    config.weight_decay = 1e-4
    config.model.backbone = "resnet50_fpn"
    config.model.image_normalization = "torchvision"
    config.model.anchors.sizes = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per level, P2..P6
    config.model.rpn.channels = 256
    config.model.rpn.pre_nms_top_n = 2000
    config.model.rpn.post_nms_top_n = 2000
    config.model.rpn.min_size = 0.0
    config.model.rpn.border_rule = "train_crossing"  # torchvision, detectron2
    config.model.roi.hidden = (1024, 1024)
    config.model.roi.op = "align"
    config.model.roi.num_samples = 512
    config.model.roi.box_loss_beta = 1.0 / 9.0  # torchvision's fastrcnn_loss
    config.model.test.pre_nms_top_n = 1000
    config.model.test.post_nms_top_n = 1000
    config.model.test.nms_iou = 0.5  # torchvision's and detectron2's box_nms_thresh
    config.data.tfds_name = "voc/2007,voc/2012"
    config.data.eval_split = "voc/2007:test"
    config.data.min_size = 800
    config.data.max_size = 1333
    return config
