"""Videos: read and sample frames, analyse them for deepfakes, render and watch live."""

from .analyze import (
    AGGREGATIONS,
    aggregate,
    analyze_video,
    confident_strategy,
    flicker,
    smooth,
)
from .live import format_summary, format_update, parse_source, watch
from .read import (
    VIDEO_EXTENSIONS,
    Video,
    VideoError,
    VideoInfo,
    is_video_path,
    open_video,
    sample_frames,
    sample_indices,
    video_info,
)
from .render import annotate_video, plot_timeline

__all__ = ["AGGREGATIONS", "VIDEO_EXTENSIONS", "Video", "VideoError", "VideoInfo", "aggregate",
           "analyze_video", "annotate_video", "confident_strategy", "flicker",
           "format_summary", "format_update", "is_video_path", "open_video", "parse_source",
           "plot_timeline", "sample_frames", "sample_indices", "smooth", "video_info", "watch"]
