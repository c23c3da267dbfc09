"""Per-head decay rates as the paper's code builds them (ALiBi slopes)."""
import math

import torch


def _geometric_slopes(num_heads):
    # 2^(-8 (i + 1) / H) for i = 0 .. H - 1
    return [2.0 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)]


def _alibi_slopes(num_heads):
    if num_heads & (num_heads - 1) == 0:
        return _geometric_slopes(num_heads)
    # ALiBi's interleave: the slopes of the nearest power of two below, then every
    # other slope of twice that, up to num_heads.
    closest = 2 ** math.floor(math.log2(num_heads))
    return _geometric_slopes(closest) + _geometric_slopes(2 * closest)[0::2][: num_heads - closest]


def build_slopes(num_heads, layer_idx=None, num_layers=None, device=None):
    """Decay rates s_h (lambda_h = exp(-s_h)) for `num_heads` heads: a float32 tensor [H].

    With `layer_idx` and `num_layers`, scales them as TransNormerLLM does per layer:
    s * (1 - layer_idx / (num_layers - 1) + 1e-5), so the first layer decays most and
    the last almost not at all.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    slopes = torch.tensor(_alibi_slopes(num_heads), dtype=torch.float32, device=device)
    if layer_idx is None and num_layers is None:
        return slopes
    if layer_idx is None or num_layers is None:
        raise ValueError(
            f"layer_idx and num_layers go together, got layer_idx={layer_idx!r}, num_layers={num_layers!r}"
        )
    for name, value in (("layer_idx", layer_idx), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if num_layers < 1 or not 0 <= layer_idx < num_layers:
        raise ValueError(f"expected 0 <= layer_idx < num_layers, got layer_idx={layer_idx}, num_layers={num_layers}")
    depth = layer_idx / (num_layers - 1) if num_layers > 1 else 0.0
    return slopes * (1.0 - depth + 1e-5)
