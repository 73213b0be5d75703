#!/usr/bin/env bash
# The Hugging Face tests (tests/test_hf.py) against transformers 4.x, beside the 5.x the hf extra installs:
# seqarch.hf supports both (transformers 5 spells the config base class PreTrainedConfig, 4 PretrainedConfig).
# transformers 4 and the hub and tokenizers releases it needs go into a folder of their own, put first on
# PYTHONPATH, so the virtual environment keeps its 5.x. Usage, from the repository root with the venv active:
#   bash scripts/test_transformers4.sh [FOLDER]      (default .cache/transformers4)
set -euo pipefail
target=${1:-.cache/transformers4}
python -m pip install -q --no-deps --target "$target" "transformers==4.57.3" "huggingface_hub==0.36.0" \
    "tokenizers==0.22.1"
PYTHONPATH="$target" python -c "import transformers; v = transformers.__version__; assert v.startswith('4.'), v; print('transformers', v)"
PYTHONPATH="$target" python -m pytest -q -p no:cacheprovider tests/test_hf.py
