"""Find faces and cut them out the way the classifier expects."""

from .crop import DEFAULT_MARGIN, crop_faces, square_box, square_crop
from .detect import (
    DEFAULT_DETECTOR,
    DetectorUnavailable,
    Face,
    FaceDetector,
    HaarDetector,
    RetinaFaceDetector,
    get_detector,
    iou,
    largest_face,
    list_detectors,
)

__all__ = ["DEFAULT_DETECTOR", "DEFAULT_MARGIN", "DetectorUnavailable", "Face", "FaceDetector",
           "HaarDetector", "RetinaFaceDetector", "crop_faces", "get_detector", "iou", "largest_face",
           "list_detectors", "square_box", "square_crop"]
