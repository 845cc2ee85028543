#!/usr/bin/env bash
# Install, build an index from the bundled sample catalog, and answer a few example queries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
VENV=${TEXTGUIDE_VENV:-.venv}
"$VENV/bin/python" scripts/build_index.py --sample indexes/sample
"$VENV/bin/textguide" search indexes/sample "linen shirt for the beach" "cast iron pan" -k 5
"$VENV/bin/textguide" search indexes/sample "warm winter boots" -k 5 --category Shoes
"$VENV/bin/textguide" similar indexes/sample tg-0006 -k 5
