"""Mask R-CNN model, its RoIAlign op and the runtimes that execute it.

``engines`` imports neither ``streamer`` nor ``build_engine``: both depend on it.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
