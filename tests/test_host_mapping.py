"""Host-side checks of the kernels' work mapping (csrc/sequences.cuh): each program in
tests/host/ is built by nvcc as host code and run; it prints "ok" or the first failure.
They need no GPU, so CI runs them too."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = sorted((ROOT / "tests" / "host").glob("*.cu"))


def nvcc():
    candidate = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


@pytest.mark.skipif(nvcc() is None, reason="needs nvcc")
@pytest.mark.parametrize("program", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_host_program(program, tmp_path):
    binary = tmp_path / program.stem
    # sm_80 for the device code the headers hold (sequences.cuh's hand-off needs sm_70);
    # only the host code runs.
    subprocess.run([nvcc(), "-std=c++17", "-O2", "-arch=sm_80", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
                    str(program), "-o", str(binary)], check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr
