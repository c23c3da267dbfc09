"""Lightning Attention-2 (Qin et al., 2024) as CUDA kernels for PyTorch."""
from . import reference
from .interface import lightning_attn
from .slopes import build_slopes

__all__ = ["lightning_attn", "build_slopes", "reference"]
__version__ = "0.1.0"
