#!/usr/bin/env bash
# The test command: installs what is missing, builds the extension, runs pytest
# (GPU tests skip without a GPU). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
bash scripts/build.sh
# The property tests' library (tests/test_fuzz.py); offline, they skip without it.
$PYTHON -c "import hypothesis" 2>/dev/null || $PYTHON -m pip install -q hypothesis ||
    echo "scripts/test.sh: hypothesis could not be installed; tests/test_fuzz.py will skip" >&2
$PYTHON -m pytest tests "$@"
