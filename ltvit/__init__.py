__version__ = "0.1.0"
"""LT-ViT: label tokens for multi-label chest X-ray classification, on timm.

`import ltvit` registers the `ltvit_*` models with timm and exposes the public API."""
from .core import *
from .model import *
from .checkpoint import *
from .data import *
from .synthetic import make_synthetic
from .cache import build_cache, cache_dataset, default_cache_dir, ImageCache
from .metrics import auc_report
from .train import TrainConfig, train
from .interpret import attention_maps, gradcam_maps, label_maps, plot_maps, compare_localisation
