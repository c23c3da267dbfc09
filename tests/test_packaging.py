"""The sdist builds on its own: every file the extension's sources include is in it
(setuptools packs the listed sources but none of their headers unless MANIFEST.in names
them, and a wheel built from such an sdist failed at the first #include); and it carries
the package's version."""
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import lightning_attn2_cuda

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def included_files(sources):
    """Repository paths of the quoted includes reachable from `sources`, resolved as nvcc
    does here: next to the including file, then in csrc/ (setup.py's include dir)."""
    seen, todo = set(), list(sources)
    while todo:
        path = todo.pop()
        for name in INCLUDE.findall((ROOT / path).read_text()):
            for candidate in (Path(path).parent / name, Path("csrc") / name):
                resolved = (ROOT / candidate).resolve().relative_to(ROOT).as_posix()
                if (ROOT / resolved).is_file():
                    if resolved not in seen:
                        seen.add(resolved)
                        todo.append(resolved)
                    break
            else:
                raise AssertionError(f"{path} includes {name}, found neither next to it nor in csrc/")
    return seen


def test_sdist_holds_every_included_file(tmp_path):
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (archive,) = tmp_path.glob("*.tar.gz")
    assert archive.name == f"lightning_attn2_cuda-{lightning_attn2_cuda.__version__}.tar.gz", archive.name
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    sources = sorted(n for n in names if n.startswith("csrc/") and n.endswith((".cu", ".cpp")))
    assert "csrc/api.cpp" in sources and any(s.startswith("csrc/instantiations/") for s in sources), sources
    missing = sorted(included_files(sources) - names)
    assert not missing, f"the sdist lacks files its sources include: {missing}"
