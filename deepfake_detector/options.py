"""How each input is framed and sampled, :class:`PredictOptions`: one object that the CLI, the
web app and scan hand to :func:`~deepfake_detector.predict.predict_paths` and on to video
analysis, instead of the same keywords threaded through every signature."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

DEFAULT_N_FRAMES = 32  # frames sampled per video


@dataclass(frozen=True)
class PredictOptions:
    """``faces``: None frames each image as the model does (its
    :attr:`~deepfake_detector.models.Predictor.framing`: the default crops the largest face);
    True crops the largest face; False scores the whole image. ``whole_if_no_face``: an image
    without a face is scored whole instead of getting ``NoFace``. ``all_faces``: score every
    face, and keep the highest P(fake) (a photo or frame is fake if any face in it is).
    ``n_frames`` / ``every``: how a video is sampled
    (:func:`~deepfake_detector.video.read.sample_frames`). ``detector``: a face detector's name
    or instance (None: the default). ``margin``: the crop's margin per side (None: the
    model's, the framing of its training crops). ``keep_pixels``: an image's result keeps its
    decoded picture and its crops (the web app draws from them). ``limits``: what one input may
    cost (a :class:`~deepfake_detector.data.limits.Limits`; None: those in force, from the
    environment, which is how worker processes inherit them)."""

    faces: bool | None = None
    whole_if_no_face: bool = False
    all_faces: bool = False
    n_frames: int | None = DEFAULT_N_FRAMES
    every: int | None = None
    detector: object = None
    margin: float | None = None
    keep_pixels: bool = False
    limits: object = None

    @classmethod
    def of(cls, options: PredictOptions | None = None, **changes) -> PredictOptions:
        """``options`` (default: the defaults) with ``changes``; a change of None keeps the
        option as it is, so that a caller can pass its own keywords through unread."""
        options = options or cls()
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(options, **changes) if changes else options

    def framed_for(self, model) -> PredictOptions:
        """These options with ``faces`` decided: None becomes the model's framing."""
        if self.faces is not None:
            return self
        return dataclasses.replace(self, faces=getattr(model, "framing", "face") == "face")

    def face_detector(self):
        """The detector instance (a name is looked up once, then cached)."""
        if self.detector is None or isinstance(self.detector, str):
            from .faces import get_detector

            return get_detector(self.detector)
        return self.detector

    def margin_for(self, model) -> float:
        from .faces.crop import model_margin

        return model_margin(model, self.margin)
