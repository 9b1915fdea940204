"""ResNet-50 + FPN Faster R-CNN on COCO 2017 (tfds ``coco/2017``), the 1x schedule.

Run:
  python train.py --config=configs/coco_resnet50_fpn.py --workdir=runs/coco_r50 \
    --config.model.pretrained=resnet50.npz
  python eval.py --config=configs/coco_resnet50_fpn.py --workdir=runs/coco_r50

Expected: about 0.37 COCO AP (torchvision's fasterrcnn_resnet50_fpn reaches 0.370
with this schedule: batch 16, 90k steps, lr 0.02, decays at 60k and 80k). Crowd
boxes are left out of training and ignored in evaluation.
"""

from configs import voc_resnet50_fpn


def get_config():
    config = voc_resnet50_fpn.get_config()
    config.num_train_steps = 90_000
    config.lr_decay_steps = (60_000, 80_000)
    config.data.tfds_name = "coco/2017"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.max_boxes = 100
    config.data.exclude_difficult = True
    return config
