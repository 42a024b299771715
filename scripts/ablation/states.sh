#!/usr/bin/env bash
# EntropyPrune on query against key states (paper Appendix C, Table 7): entropy at layer 2 with STATES=query
# and STATES=key at each budget on each benchmark, plus the unpruned runs.
#
#   bash scripts/ablation/states.sh
#   AVG_TOKENS="192 128" BENCHMARKS="mme mmbench" bash scripts/ablation/states.sh
#
# Environment: as scripts/ablation/method_sweep.sh, with these defaults:
#   METHODS=entropy, STATES="query key", AVG_TOKENS="192 128 64", SWEEP=states, and Table 1's benchmarks.
# Run names carry "-key" for the key-state runs (query is the scripts' default and has no tag).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export METHODS=${METHODS:-entropy}
export STATES=${STATES:-"query key"}
export SWEEP=${SWEEP:-states}
exec bash scripts/ablation/method_sweep.sh
