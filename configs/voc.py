"""VGG16 Faster R-CNN on Pascal VOC 2007 trainval, tested on VOC 2007 test (the seed's setting).

Run (vgg16.npz from `python -m frcnn_jax.convert_weights --arch vgg16`, see README):
  python train.py --config=configs/voc.py --workdir=runs/voc \
    --config.model.pretrained=vgg16.npz
  python eval.py --config=configs/voc.py --workdir=runs/voc

torchvision's ImageNet VGG16 takes the default image_normalization "torchvision"; the
Caffe VGG16 of the paper and simple-faster-rcnn-pytorch takes
--config.model.image_normalization=caffe.

Expected: about 0.70 VOC07 mAP@0.5 from ImageNet weights (0.699 in the paper,
0.712 in simple-faster-rcnn-pytorch) after 14 epochs of 5011 images at batch 1;
from random initialisation far less. Scale batch_size with your devices: the
learning rate follows linearly, but the schedule is in steps, so divide
num_train_steps, lr_decay_steps and warmup_steps by the same factor (batch 8:
--config.num_train_steps=8750 --config.lr_decay_steps="(5625,)" --config.warmup_steps=63).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.eval_every_steps = 0
    return config
