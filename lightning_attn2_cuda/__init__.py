"""Lightning Attention-2 (Qin et al., 2024) as CUDA kernels for PyTorch."""
from . import reference
from .interface import lightning_attn, lightning_attn_decode
from .slopes import build_slopes

__all__ = ["lightning_attn", "lightning_attn_decode", "build_slopes", "reference"]
__version__ = "0.1.0"
