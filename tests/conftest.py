import zlib

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def seed(request):
    """A different, reproducible random stream for every test."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def poison_allocations(monkeypatch):
    """Tensors allocated through torch.empty start as NaN (as FLA's conftest does), so
    an output element the kernels forget to write makes the test fail."""
    real_empty = torch.empty

    def empty_nan(*args, **kwargs):
        x = real_empty(*args, **kwargs)
        if x.is_floating_point():
            x.fill_(float("nan"))
        return x

    monkeypatch.setattr(torch, "empty", empty_nan)


def relative_l2(x, ref):
    """||x - ref|| / ||ref|| in float64; NaN anywhere gives NaN, which fails every bound."""
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def random_inputs(batch, heads, seqlen, dim_qk, dim_v, dtype, device, requires_grad=False):
    q, k = (torch.randn(batch, heads, seqlen, dim_qk, dtype=dtype, device=device) for _ in range(2))
    v = torch.randn(batch, heads, seqlen, dim_v, dtype=dtype, device=device)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]
