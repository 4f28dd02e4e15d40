"""Square face crops for the classifier: :func:`square_box` / :func:`square_crop` (the geometry:
centred on the face box, padded where it leaves the image), :func:`crop_faces` (detect and crop),
:func:`crop_samples` (training crops cached on disk), :func:`frame_image` (a source framed for a
model) and :func:`model_margin` (which margin to use).
"""

from __future__ import annotations

import cv2
import numpy as np

from .detect import Face, FaceDetector

DEFAULT_MARGIN = 0.3


def model_margin(model, margin: float | None = None) -> float:
    """The crop margin: ``margin`` as asked, else the model's ``face_margin`` (the framing of
    its training crops), else :data:`DEFAULT_MARGIN`.

    The ``dfdc-faces`` training crops are tight -- RetinaFace's box on them is ~0.86 of the
    crop wide and ~1.0 high (docs/faces.md) -- so ``margin=0`` reproduces their framing;
    larger margins show the classifier more background than it was trained on.
    """
    return float(getattr(model, "face_margin", DEFAULT_MARGIN)) if margin is None else margin
BORDERS = {"constant": cv2.BORDER_CONSTANT, "edge": cv2.BORDER_REPLICATE}


def square_box(box, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The integer square (x1, y1, x2, y2) around ``box`` enlarged by ``margin`` per side.

    The square is centred on the box; its side is the box's longer side times ``1 + 2 * margin``
    (``margin`` is the fraction of the box added on *each* side, as the DFDC winner padded each
    side by a third of the box). It may extend beyond the image: :func:`square_crop` pads
    there rather than shifting or clipping, so the face stays centred and at the same scale
    whatever its position in the frame.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face box {box}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = max(1, int(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin))))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    sx = int(round(cx - side / 2))
    sy = int(round(cy - side / 2))
    return sx, sy, sx + side, sy + side


def square_crop(image: np.ndarray, box, margin: float = DEFAULT_MARGIN, size: int | None = None,
                border: str = "constant", value=0) -> np.ndarray:
    """Cut the square around ``box`` (see :func:`square_box`) out of ``image``.

    Parts outside the image are padded: ``border="constant"`` with ``value`` (black), or
    ``"edge"`` by repeating the border pixels. With ``size`` the crop is resized to
    ``size x size`` (``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging).
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    image = np.asarray(image)
    h, w = image.shape[:2]
    x1, y1, x2, y2 = square_box(box, margin)
    side = x2 - x1
    # the part inside the image, then pad what is missing on each side
    ix1, iy1, ix2, iy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if ix2 <= ix1 or iy2 <= iy1:  # entirely outside: all padding
        crop = np.zeros((side, side) + image.shape[2:], image.dtype)
        if border == "constant":
            crop[...] = value
        else:  # nearest edge pixel
            cx = min(max((x1 + x2) // 2, 0), w - 1)
            cy = min(max((y1 + y2) // 2, 0), h - 1)
            crop[...] = image[cy, cx]
    else:
        crop = image[iy1:iy2, ix1:ix2]
        top, left, bottom, right = iy1 - y1, ix1 - x1, y2 - iy2, x2 - ix2
        if top or left or bottom or right:
            fill = value if np.ndim(value) else [value] * (image.shape[2] if image.ndim == 3 else 1)
            crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), top, bottom, left, right,
                                      BORDERS[border], value=fill)
            if image.ndim == 3 and crop.ndim == 2:
                crop = crop[..., None]
    if size is not None and crop.shape[0] != size:
        interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        resized = cv2.resize(np.ascontiguousarray(crop), (int(size), int(size)), interpolation=interp)
        crop = resized.reshape((size, size) + crop.shape[2:])
    return np.ascontiguousarray(crop)


def crop_faces(image: np.ndarray, detector: FaceDetector, size: int, margin: float = DEFAULT_MARGIN,
               all_faces: bool = False, border: str = "constant") -> list[tuple[Face, np.ndarray]]:
    """Detect faces and return ``(face, uint8 (size, size, 3) crop)`` pairs, largest face first.

    Only the largest face unless ``all_faces``. An empty list when no face is found.
    """
    faces = sorted(detector.detect(image), key=lambda f: f.area, reverse=True)
    if not all_faces:
        faces = faces[:1]
    return [(f, square_crop(image, f.box, margin, size, border)) for f in faces]


def crop_samples(samples, out_dir, detector: FaceDetector | None = None, margin: float = 0.0,
                 whole_if_no_face: bool = False, max_side: int = 512):
    """Crop the largest face of every sample's image once, for training with ``--faces``.

    Crops are written losslessly (PNG: no re-encoding that prediction would not do) under
    ``out_dir/<label>/`` and reused when present, so an interrupted run does not detect twice.
    Returns ``(samples, problems)``: samples now pointing at the crops (same label, group,
    source and root), and ``{path: reason}`` for the images left out (unreadable, or no face
    found unless ``whole_if_no_face``).
    """
    import hashlib
    from pathlib import Path

    from PIL import Image

    from ..data import ImageDecodeError, load_image
    from .detect import get_detector

    out_dir = Path(out_dir)
    detector = detector or get_detector()
    kept, problems = [], {}
    for s in samples:
        digest = hashlib.sha1(str(Path(s.path).resolve()).encode()).hexdigest()[:10]
        dst = out_dir / ("Fake" if s.label else "Real") / f"{Path(s.path).stem}-{digest}.png"
        if not dst.exists():
            try:
                image = load_image(s.path)
            except ImageDecodeError as e:
                problems[s.path] = str(e)
                continue
            found = crop_faces(image, detector, size=None, margin=margin)
            if found:
                crop = found[0][1]
            elif whole_if_no_face:
                crop = image
            else:
                problems[s.path] = "no face found"
                continue
            if max(crop.shape[:2]) > max_side:
                crop = cv2.resize(crop, (max_side, max_side), interpolation=cv2.INTER_AREA)
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(".tmp")
            Image.fromarray(crop).save(tmp, format="PNG", compress_level=1)
            tmp.replace(dst)
        kept.append(s._replace(path=str(dst)))  # same label, group, source and root
    return kept, problems


FRAMINGS = ("as-is", "face")  # a file as it is (already a face crop), or its largest face cut out first


NO_FACE_MESSAGE = "no face found"
WHOLE_IMAGE_MESSAGE = "no face found; the whole image was classified"


def frame(image: np.ndarray, size: int, faces: bool = True, detector: FaceDetector | None = None,
          margin: float = 0.0, all_faces: bool = False,
          whole_if_no_face: bool = False) -> tuple[list[tuple[Face | None, np.ndarray]], str | None]:
    """The one framing rule, for photos, frames and training sources alike: ``image`` ->
    (``[(face, crop)]``, message). ``faces`` False: the whole image, resized (face None).
    Else the largest face (every face with ``all_faces``), cropped with ``margin``; without
    a face, the whole image with ``whole_if_no_face``, else nothing (``NoFace``); the
    message says which."""
    from ..data import eval_transform

    if not faces:
        return [(None, eval_transform(image, size))], None
    if detector is None:
        from .detect import get_detector

        detector = get_detector()
    found = crop_faces(image, detector, size, margin=margin, all_faces=all_faces)
    if found:
        return list(found), None
    if whole_if_no_face:
        return [(None, eval_transform(image, size))], WHOLE_IMAGE_MESSAGE
    return [], NO_FACE_MESSAGE


def frame_image(image: np.ndarray, framing: str, size: int, detector: FaceDetector | None = None,
                margin: float = 0.0) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3) as a source is framed for a model
    (:func:`frame`): ``"as-is"`` resizes the whole image; ``"face"`` crops the largest face
    (the whole image where no face is found, as ``--whole-if-no-face``)."""
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose from {', '.join(FRAMINGS)}")
    pairs, _ = frame(image, size, framing == "face", detector, margin, whole_if_no_face=True)
    return pairs[0][1]
