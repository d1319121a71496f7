#!/usr/bin/env bash
# One short check of moe_lib on a CUDA GPU (about 6 minutes on one H100 or H200):
#   1. the capture, ablation and lens tests of every family's tiny model, on the GPU (fp32);
#   2. benchmarks/bench_gpu_smoke.py: bf16 tracing speed, hooked == plain logits, ids vs fp32;
#   3. the `gpu` training preset of both recipes for ~100 steps on CORPUS (tokens/s, loss,
#      checkpoints, probe traces at each checkpoint);
#   4. the ablation grid and logit lens of the trained standard checkpoint, in bf16, on the
#      held-out text and on the committed MMLU fixture.
# Logs go to $OUT (default gpu-check/). Run from the repository root:
#   bash benchmarks/gpu_check.sh            # CORPUS=datasets/corpus by default
set -uo pipefail
OUT=${OUT:-gpu-check}
CORPUS=${CORPUS:-datasets/corpus}
STEPS=${STEPS:-100}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MOE_LIB_CACHE=${MOE_LIB_CACHE:-/tmp/moe-lib-gpu-cache}
status=0

section() { echo; echo "=== $* ($(date +%T))"; }

section environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import dask, torch, transformers, xarray, zarr; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'xarray', xarray.__version__, 'zarr', zarr.__version__)"

section "1. family tests on cuda"
# The tests built on the any_family_model fixture, which MOE_LIB_TEST_DEVICE moves to the GPU.
MOE_LIB_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider \
    tests/test_capture.py tests/test_interventions.py tests/test_lens.py \
    -k "logits_identical or hooks_removed or layers_found or family_rule or weight_never \
        or recomputed or every_slot or changes_only or top1_removal or lens_at_the_last" \
    2>&1 | tee "$OUT/tests.log" | tail -25 || status=1

section "2. bf16 trace smoke benchmark"
(cd benchmarks && python3 bench_gpu_smoke.py) 2>&1 | tee "$OUT/smoke.log" || status=1

section "3. gpu preset, $STEPS steps"
for recipe in standard cross-layer; do
    python3 -m moe_lib train "$recipe" --preset gpu --device cuda --corpus "$CORPUS" \
        --out "/tmp/$recipe-gpu" --stop-after "$STEPS" >"$OUT/train-$recipe.log" 2>&1 || status=1
    grep -a "^step \|Error\|error" "$OUT/train-$recipe.log" | tail -8
    python3 - "$recipe" <<'EOF'
import sys, pandas as pd
m = pd.read_csv(f"/tmp/{sys.argv[1]}-gpu/metrics.csv")
m = m[m.domain == "all"]
last = m.iloc[-1]
print(f"{sys.argv[1]}: step {last.step}, {last.tokens_seen:,} tokens in {last.elapsed_s:.1f} s "
      f"({last.tokens_seen / last.elapsed_s:,.0f} tokens/s of training steps), val loss {last.val_loss:.3f}")
EOF
done
cp /tmp/standard-gpu/metrics.csv "$OUT/metrics-standard.csv" 2>/dev/null
cp /tmp/cross-layer-gpu/metrics.csv "$OUT/metrics-cross-layer.csv" 2>/dev/null

section "4. ablation grid and lens, bf16"
revision=$(ls /tmp/standard-gpu/checkpoints | grep -v partial | tail -1)
python3 -m moe_lib ablate /tmp/standard-gpu --revision "$revision" --device cuda --benchmark heldout \
    --corpus "$CORPUS/validation.jsonl" --n-docs 20 2>&1 | tee "$OUT/ablate-heldout.log" | tail -30 || status=1
python3 -m moe_lib ablate /tmp/standard-gpu --revision "$revision" --device cuda --benchmark mmlu \
    --mmlu-source csv --mmlu-root tests/fixtures/mmlu --n-shots 1 2>&1 | tee "$OUT/ablate-mmlu.log" | tail -30 \
    || status=1

section "done: status $status"
exit $status
