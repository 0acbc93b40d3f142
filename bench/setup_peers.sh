#!/usr/bin/env bash
# One virtual environment for the peers bench/run.py compares against (never the
# project's): PyTorch (bench/torch_peer.py), CAREamics 0.3.5, BM3D and matplotlib
# (bench/peers.py, bench/plots.py).
#
# torch==2.13.0 is a CPU build; another torch (asked for directly or pulled in by
# careamics' own pins) would fetch a multi-GB CUDA build. torchvision 0.28.0 is
# the release built against torch 2.13; careamics 0.3.5 pins an older one, so it
# goes in with --no-deps after its other requirements.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-peers"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/pip" install -q)
"${pip[@]}" torch==2.13.0
"${pip[@]}" torchvision==0.28.0 --no-deps
"${pip[@]}" "bioimageio-core>=0.9,<=0.11" "lightning>=2.2,<=2.6.6,!=2.6.2,!=2.6.3" \
    "matplotlib<=3.11.2" "microssim<=0.0.5" "numpy<=2.4.6" pillow psutil "pydantic>=2.11,<=2.14.1" \
    pyyaml "scikit-image<=0.26" "tifffile<=2026.3.3" "torchmetrics<1.9" "zarr>=3,<4" \
    bm3d torch==2.13.0
"${pip[@]}" careamics==0.3.5 --no-deps
"$venv/bin/python" -c "import torch, bm3d, matplotlib; print('peers ready: torch', torch.__version__)"
