"""The .onnx file this program writes and reads: tensor names and ``metadata_props`` keys.

Shared by the writer (:mod:`deepfake_detector.export`) and the reader
(:mod:`deepfake_detector.models.onnx_model`), so that reading needs onnxruntime only.
"""

INPUT_NAME = "image"  # float32 (N, 3, S, S), normalised
OUTPUT_NAME = "logits"  # float32 (N, 2)
FORMAT = "deepfake-detector/onnx"
FORMAT_VERSION = 1

# metadata_props keys; values are strings (JSON where structured)
META_FORMAT = "format"
META_FORMAT_VERSION = "format_version"
META_ARCH = "arch"
META_CONFIG = "config"  # JSON object
META_PREPROCESS = "preprocess"  # JSON {"input_size", "mean", "std"}
META_CLASS_NAMES = "class_names"  # JSON list
META_META = "meta"  # JSON: the whole model.meta (threshold, temperature, face_margin, version...)
META_PARAMETERS = "parameters"  # the source model's parameter count, as a decimal string
META_SOURCE_KIND = "source_kind"  # the kind of model it was exported from (numpy, torch, clip)
META_BN_FOLDED = "bn_folded"  # "1" / "0"
