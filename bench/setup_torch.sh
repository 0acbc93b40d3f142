#!/usr/bin/env bash
# A separate virtual environment with PyTorch for bench/torch_peer.py (never the project's).
# torch==2.13.0 is the CPU build; other versions may pull a multi-GB CUDA build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv-torch"
"$here/.venv-torch/bin/pip" install -q torch==2.13.0 numpy
