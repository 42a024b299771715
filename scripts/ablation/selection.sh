#!/usr/bin/env bash
# Token selection strategies at the Entropy Collapse Layer (paper Sec. 4.7.2, Table 6): EntropyPrune, FastV,
# DART and DivPrune pruning after layer 2 with 192 average tokens, plus the unpruned runs for Rel.
#
#   bash scripts/ablation/selection.sh
#   BENCHMARKS="mme textvqa" CUDA_VISIBLE_DEVICES=0,1 bash scripts/ablation/selection.sh
#
# DivPrune selects among the projected image features before the language model in its own code and in this
# registry (vision stage only), so its runs are at layer 0, not inside the language model at layer 2 as the
# paper's Table 6 places it; the sweep prints a note saying so. The other three prune at LAYER (default 2).
#
# Environment: as scripts/ablation/method_sweep.sh, with these defaults:
#   METHODS="entropy fastv dart divprune", LAYER=2, AVG_TOKENS=192, SWEEP=selection,
#   BENCHMARKS="mme textvqa sqa mmbench" (the columns Sec. 4.7.2 names: MME, SQA, TextVQA and MMB)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export METHODS=${METHODS:-"entropy fastv dart divprune"}
export LAYER=${LAYER:-2}
export SWEEP=${SWEEP:-selection}
export BENCHMARKS=${BENCHMARKS:-"mme textvqa sqa mmbench"}
if [[ -z "${KEEP:-}${RATIO:-}" ]]; then export AVG_TOKENS=${AVG_TOKENS:-192}; fi
exec bash scripts/ablation/method_sweep.sh
