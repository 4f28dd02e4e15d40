"""Data: image folders -> samples and splits -> decoded, augmented, batched uint8 arrays.

``media`` holds the one table of image and video extensions and a folder walk that counts
what it leaves out, ``datasets`` finds the samples and splits (grouped, checked disjoint), ``decode`` turns
files or bytes into RGB arrays, ``transforms`` augments them, ``loader`` batches them
reproducibly in background threads.
"""

from .datasets import (
    CLASS_NAMES,
    Sample,
    Splits,
    check_disjoint,
    class_counts,
    discover,
    find_split,
    is_split_dir,
    list_images,
    load_split,
    load_split_dir,
    read_groups,
    read_sources,
    resolve_samples,
    resolve_split,
    root_name,
    samples_from_dirs,
    source_counts,
    split_by_group,
)
from .decode import ImageDecodeError, decode_bytes, load_image, resize
from .loader import Batch, DataLoader, load_arrays
from .media import IMAGE_EXTENSIONS, MEDIA_KINDS, VIDEO_EXTENSIONS, IgnoredFiles, MediaWalk, kind_of, walk_media
from .roots import DataRoot, data_roots, discover_roots
from .transforms import AugmentConfig, augment, eval_transform

__all__ = ["CLASS_NAMES", "IMAGE_EXTENSIONS", "MEDIA_KINDS", "VIDEO_EXTENSIONS", "AugmentConfig", "Batch",
           "DataLoader", "DataRoot", "IgnoredFiles", "ImageDecodeError", "MediaWalk", "Sample", "Splits", "augment",
           "check_disjoint", "class_counts", "data_roots", "decode_bytes", "discover", "discover_roots",
           "eval_transform", "find_split", "is_split_dir", "kind_of", "list_images", "load_arrays", "load_image",
           "load_split", "load_split_dir", "read_groups", "read_sources", "resize", "resolve_samples",
           "resolve_split", "root_name", "samples_from_dirs", "source_counts", "split_by_group", "walk_media"]
