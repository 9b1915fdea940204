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
from random initialisation far less. The schedule is in epochs (14, x0.1 after 9, a
warmup of 0.1 epoch), turned into steps from the dataset's size at start, so any batch
size runs the seed's schedule: --config.batch_size=8 gives 8770 steps with the decay at
step 5638, and the learning rate follows the batch size linearly.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.num_epochs = 14.0
    config.lr_decay_epochs = (9.0,)
    config.warmup_epochs = 0.1
    config.eval_every_steps = 0
    return config
