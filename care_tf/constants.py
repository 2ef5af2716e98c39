"""Constants shared by preprocessing, training, evaluation and export."""

# ImageNet channel statistics on pixels scaled to [0, 1] (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Default location of the offline Fashion-MNIST IDX files (Debian package
# `dataset-fashion-mnist`); overridden by the CARE_DATA_DIR environment variable.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# Weighted kNN evaluation (InstDisc): neighbours and vote temperature.
DEFAULT_K = 200
DEFAULT_TEMPERATURE = 0.1
