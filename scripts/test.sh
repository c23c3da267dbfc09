#!/usr/bin/env bash
# The test command: installs what is missing, builds the extension, runs pytest
# (GPU tests skip without a GPU). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
${PYTHON:-python3} -m pytest tests "$@"
