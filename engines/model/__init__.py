"""Our Mask R-CNN: torchvision state-dict compatible and numerically equal, export-friendly.

One module per pipeline stage: ``preprocess`` (resize, normalize, pad), ``backbone``
(ResNet + FPN), ``anchors``, ``rpn`` (proposals), ``box_head`` (detections),
``mask_head`` (mask probabilities), ``maskrcnn`` (assembly), ``state_dict`` (loading).
"""

from engines.model.config import MaskRCNNConfig
from engines.model.maskrcnn import MaskRCNN, RawDetections

__all__ = ["MaskRCNN", "MaskRCNNConfig", "RawDetections"]
