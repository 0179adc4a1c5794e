"""Our Mask R-CNN: torchvision state-dict compatible and numerically equal, export-friendly.

One module per pipeline stage: ``preprocess`` (resize, normalize, pad), ``backbone``
(ResNet + FPN), ``anchors``, ``rpn`` (proposals), ``roi_heads`` (detections and mask
probabilities, from the layers and pure functions of ``box_head`` and ``mask_head``),
``maskrcnn`` (assembly), ``state_dict`` (loading). ``box_ops`` holds the pure box math,
``selection`` the per-image selection and the ops in which the eager and the static
(export) forward differ, ``config`` the settings.
"""

from engines.model.config import MaskRCNNConfig
from engines.model.maskrcnn import MaskRCNN, RawDetections

__all__ = ["MaskRCNN", "MaskRCNNConfig", "RawDetections"]
