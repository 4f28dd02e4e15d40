"""Data: image folders -> samples and splits -> decoded, augmented, batched uint8 arrays.

``datasets`` finds the samples and splits (grouped, checked disjoint), ``decode`` turns
files or bytes into RGB arrays, ``transforms`` augments them, ``loader`` batches them
reproducibly in background threads.
"""

from .datasets import (
    CLASS_NAMES,
    IMAGE_EXTENSIONS,
    Sample,
    Splits,
    check_disjoint,
    class_counts,
    discover,
    find_split,
    list_images,
    load_split,
    read_groups,
    samples_from_dirs,
    split_by_group,
)
from .decode import ImageDecodeError, decode_bytes, load_image, resize
from .loader import Batch, DataLoader, load_arrays
from .transforms import AugmentConfig, augment, eval_transform

__all__ = ["CLASS_NAMES", "IMAGE_EXTENSIONS", "AugmentConfig", "Batch", "DataLoader", "ImageDecodeError",
           "Sample", "Splits", "augment", "check_disjoint", "class_counts", "decode_bytes", "discover",
           "eval_transform", "find_split", "list_images", "load_arrays", "load_image", "load_split",
           "read_groups", "resize", "samples_from_dirs", "split_by_group"]
