"""Text-line detection with the PP-OCR DB text detector that the `rapidocr` wheel ships.

We load the ONNX file from the installed `rapidocr` package ourselves and run it with
onnxruntime on CPU: no download at run time, no import of rapidocr's OCR pipeline (1.5 s and
a recogniser we do not use), and the input size, thresholds and thread count under our control.
The post-processing is the DB recipe (threshold the probability map, one rotated rectangle per
connected component, grow it by area * unclip_ratio / perimeter), written against OpenCV.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import MissingDependency
from pipeline.layout.geometry import Line, Point, bbox_of

INSTALL_HINT = "install it with: pip install 'rapidocr>=3.10,<3.11' 'onnxruntime>=1.20,<2'"
_MEAN = np.float32(0.5 * 255)
_STD = np.float32(0.5 * 255)
_MIN_SIDE = 3  # DB's smallest accepted side, in detector-input pixels


@dataclass(frozen=True)
class DetectorSettings:
    """What decides the detector's output; all of it belongs in a run's config fingerprint.

    `max_side` is the long side of the image the network sees (pages are shrunk to it, small
    ones enlarged up to it until their short side reaches `min_side`). 1280 was chosen on the
    test pages (BENCHMARKS.md, "Line detection"): larger inputs split handwriting into word
    pieces, smaller ones merge close lines.
    """

    model: str = "PP-OCRv6_det_small"
    max_side: int = 1536
    min_side: int = 736
    bin_thresh: float = 0.3
    box_thresh: float = 0.5
    unclip_ratio: float = 1.2
    max_candidates: int = 3000

    def fingerprint(self) -> str:
        """Settings and the model file's checksum, hashed: equal fingerprints, equal lines."""
        record = asdict(self) | {"model_sha256": model_checksum(self.model)}
        text = json.dumps(record, sort_keys=True)
        return "det-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def model_path(name: str) -> Path:
    """The ONNX file inside the installed rapidocr package (found without importing it)."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"line detection needs the rapidocr package; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / f"{name}.onnx"
    if not path.is_file():
        raise MissingDependency(
            f"the detection model {name}.onnx is not in the installed rapidocr package "
            f"({path.parent}); {INSTALL_HINT}"
        )
    return path


@functools.cache
def model_checksum(name: str) -> str:
    return hashlib.sha256(model_path(name).read_bytes()).hexdigest()


def input_size(width: int, height: int, settings: DetectorSettings) -> tuple[int, int]:
    """The network's input size for a page: long side <= max_side, both multiples of 32."""
    scale = min(1.0, settings.max_side / max(width, height))
    if min(width, height) * scale < settings.min_side:
        scale = min(settings.min_side / min(width, height), settings.max_side / max(width, height))
    return (max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32))


class LineDetector:
    """One onnxruntime session for the detection model; load once per process, call per page."""

    def __init__(self, settings: DetectorSettings | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise MissingDependency(f"line detection needs onnxruntime; {INSTALL_HINT}") from err
        self.settings = settings or DetectorSettings()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path(self.settings.model)), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def detect(self, image: Image.Image, page_size: tuple[int, int] | None = None) -> list[Line]:
        """Lines in `page_size` pixel space (default: the image's own size), in no order.

        `image` may be a shrunk copy of the page; the coordinates are scaled back to the page.
        The network's input size follows the page, not the copy, so the text reaches it at the
        same scale (what its recall depends on) however much the loader shrank the page.
        """
        page_w, page_h = page_size or image.size
        in_w, in_h = input_size(page_w, page_h, self.settings)
        pixels = np.asarray(image.convert("RGB").resize((in_w, in_h), Image.Resampling.BILINEAR))
        # the model was trained on BGR input (PaddleOCR reads images with OpenCV)
        tensor = ((pixels[:, :, ::-1].astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)
        prob = self._session.run(None, {self._input: tensor[None]})[0][0, 0]
        return _lines_from_map(prob, self.settings, page_w / in_w, page_h / in_h, page_w, page_h)


@functools.cache
def shared_detector(settings: DetectorSettings, threads: int = 0) -> LineDetector:
    """The process's detector for these settings (page loaders keep one session each)."""
    return LineDetector(settings, threads)


def _lines_from_map(
    prob: np.ndarray, s: DetectorSettings, sx: float, sy: float, page_w: int, page_h: int
) -> list[Line]:
    import cv2

    mask = cv2.dilate((prob > s.bin_thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    lines = []
    for contour in contours[: s.max_candidates]:
        center, (w, h), angle = cv2.minAreaRect(contour)
        if min(w, h) < _MIN_SIDE:
            continue
        kernel = _clockwise(cv2.boxPoints((center, (w, h), angle)))
        score = _mean_inside(prob, kernel)
        if score < s.box_thresh:
            continue
        grow = w * h * s.unclip_ratio / (2 * (w + h))  # unclip a rectangle: every side by this
        if min(w, h) + 2 * grow < _MIN_SIDE + 2:
            continue
        box = _clockwise(cv2.boxPoints((center, (w + 2 * grow, h + 2 * grow), angle)))
        polygon = _to_page(box, sx, sy, page_w, page_h)
        bbox = bbox_of(polygon)
        if bbox[2] - bbox[0] <= 3 or bbox[3] - bbox[1] <= 3:
            continue
        vertical = bbox[3] - bbox[1] > bbox[2] - bbox[0]
        baseline = None if vertical else _to_page(kernel[[3, 2]], sx, sy, page_w, page_h)
        lines.append(Line(polygon, bbox, vertical, round(float(score), 4), baseline))
    return lines


def _clockwise(points: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left (image coordinates, y down)."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def _mean_inside(prob: np.ndarray, quad: np.ndarray) -> float:
    """Mean probability inside the quad (DB's "fast" box score)."""
    import cv2

    h, w = prob.shape
    x0 = int(np.clip(math.floor(quad[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(math.ceil(quad[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(math.floor(quad[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(math.ceil(quad[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(quad - (x0, y0)).astype(np.int32)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _to_page(
    points: np.ndarray, sx: float, sy: float, page_w: int, page_h: int
) -> tuple[Point, ...]:
    return tuple(
        (
            min(max(round(float(x) * sx), 0), page_w - 1),
            min(max(round(float(y) * sy), 0), page_h - 1),
        )
        for x, y in points
    )
