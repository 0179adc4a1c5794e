"""How masks are written in frame messages: the literal shared by the schema, the sinks and the config.

Dependency-free, so that validating a configuration (``streamer config check``) does not load the
mask encoders (pycocotools, numpy) or a model runtime.
"""

from typing import Literal, get_args

MaskEncoding = Literal["rle", "polygon", "none"]
"""``rle``: COCO compressed RLE; ``polygon``: outer contours; ``none``: no mask."""
MASK_ENCODINGS: tuple[MaskEncoding, ...] = get_args(MaskEncoding)
