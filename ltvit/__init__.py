__version__ = "0.1.0"
"""LT-ViT: label tokens for multi-label chest X-ray classification, on timm.

`import ltvit` registers the `ltvit_*` models with timm and exposes the public API."""
from .core import *
from .model import *
