"""Datasets and the one preprocessing path.

Readers (COCO, YOLO txt) share one item interface: ``ds[i] -> (rgb uint8 HxWx3, boxes float32
(N, 4) xyxy pixels, labels int64 (N,) 0-based)``. ``letterbox``/``preprocess`` turn images into
network input for training, evaluation, calibration and every backend alike.
"""

from edgecsp.data.coco import (
    CocoDataset,
    DataWarning,
    DetectionDataset,
    ImageRecord,
    resolve_dataset,
    write_coco,
)
from edgecsp.data.preprocess import (
    PAD_VALUE,
    LetterboxInfo,
    image_size,
    letterbox,
    load_image_rgb,
    preprocess,
    to_tensor_batch,
)
from edgecsp.data.shapes import (
    CLASS_NAMES as SHAPES_CLASS_NAMES,
)
from edgecsp.data.shapes import (
    default_cache_dir,
    ensure_shapes_val,
    generate_shapes,
)
from edgecsp.data.yolo_txt import YoloDataset, yolo_to_coco

__all__ = [
    "PAD_VALUE",
    "SHAPES_CLASS_NAMES",
    "CocoDataset",
    "DataWarning",
    "DetectionDataset",
    "ImageRecord",
    "LetterboxInfo",
    "YoloDataset",
    "default_cache_dir",
    "ensure_shapes_val",
    "generate_shapes",
    "image_size",
    "letterbox",
    "load_image_rgb",
    "preprocess",
    "resolve_dataset",
    "to_tensor_batch",
    "write_coco",
    "yolo_to_coco",
]
