"""Builds lightning_attn2_cuda._C with nvcc through torch.utils.cpp_extension.

Environment:
  TORCH_CUDA_ARCH_LIST  architectures to build, e.g. "9.0a" or "8.0;9.0a"
                        (default: sm_80 and sm_90a)
  MAX_JOBS              parallel compile jobs (ninja)
  CUDA_HOME             the CUDA toolkit; /usr/local/cuda when unset and present,
                        since torch's guess from an nvcc wrapper on PATH can be wrong
"""
import os
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
# One version, the package's own (read as text: importing the package needs the extension).
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "lightning_attn2_cuda" / "__init__.py").read_text(), re.M)[1]

if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402 (reads CUDA_HOME)


def gencode_flags():
    """nvcc -gencode flags for TORCH_CUDA_ARCH_LIST, default sm_80 + sm_90a."""
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    flags = []
    for arch in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        if not arch:
            continue
        ptx = arch.endswith("+PTX")
        number = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{number},code=compute_{number}")
    return flags


sources = ["csrc/api.cpp", "csrc/dispatch.cu", "csrc/chunk_passes.cu", "csrc/decode.cu"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "instantiations").glob("sweep_*.cu")
)

setup(
    name="lightning_attn2_cuda",
    version=VERSION,
    description="Lightning Attention-2 (causal linear attention with decay) as CUDA kernels for PyTorch",
    packages=find_packages(include=["lightning_attn2_cuda", "lightning_attn2_cuda.*"]),
    python_requires=">=3.9",
    install_requires=["torch", "numpy"],
    ext_modules=[
        CUDAExtension(
            name="lightning_attn2_cuda._C",
            sources=sources,
            include_dirs=[str(ROOT / "csrc")],
            extra_compile_args={
                "cxx": ["-O3", "-std=c++20"],
                "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
                # torch adds no arch flags of its own when these are present.
                + gencode_flags(),
            },
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
