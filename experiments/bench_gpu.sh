#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md: every fast-path step of the performance issue, measured with
# `python -m aed_jax.bench` at the seed's effective batch (50 x 16 sequences of 200 tokens).
#
#   experiments/bench_gpu.sh OUT_DIR [ROW ...]
#
# Writes two files, whatever the number of rows: OUT_DIR/rows.jsonl, one JSON object per row that
# succeeded (bench --json plus the row's name and command), and OUT_DIR/bench.log, every row's
# stderr. A row that fails or overruns its time limit is reported and skipped.
# With ROW names, only those rows run. On a machine without this project's dependencies, install
# them first (grain, ml_collections, tensorboardX, array-record and portpicker are the ones a JAX
# GPU image usually lacks). PYTHON picks the interpreter (default python3), ROW_TIMEOUT_S the
# limit of each row in seconds (default 150).
set -u
out=${1:?usage: experiments/bench_gpu.sh OUT_DIR [ROW ...]}
shift
mkdir -p "$out"
limit=${ROW_TIMEOUT_S:-150}
python=${PYTHON:-python3}

rows=(
  # name | bench arguments
  "baseline|--config=configs/baseline.py"
  "aed_mse_pos_sub|--config=configs/mse_pos_sub.py --input_pipeline"
  "aed_pos_sub_no_loss|--config=configs/pos_sub.py --generate_tokens 0"
  # One step of the fast path off at a time, on the AED MSE + pos-sub model:
  "aed_xla_attention|--config=configs/mse_pos_sub.py --config.attention_impl=xla --generate_tokens 0"
  "aed_whole_ce|--config=configs/mse_pos_sub.py --config.ce_chunk_tokens=0 --generate_tokens 0"
  "aed_seed_split|--config=configs/mse_pos_sub.py --config.micro_batch_size=50 --generate_tokens 0"
  "aed_scan_layers|--config=configs/mse_pos_sub.py --config.scan_layers=True --generate_tokens 0"
  "aed_float32|--config=configs/mse_pos_sub.py --config.dtype=float32 --generate_tokens 0"
  "baseline_xla_attention|--config=configs/baseline.py --config.attention_impl=xla --generate_tokens 0"
  "baseline_scan_layers|--config=configs/baseline.py --config.scan_layers=True --generate_tokens 0"
)

result=$(mktemp)
trap 'rm -f "$result"' EXIT
for row in "${rows[@]}"; do
  name=${row%%|*}
  args=${row#*|}
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  echo "== $name: python -m aed_jax.bench $args --json" | tee -a "$out/bench.log"
  # shellcheck disable=SC2086
  if timeout "$limit" "$python" -m aed_jax.bench $args --json >"$result" 2>>"$out/bench.log"; then
    "$python" - "$name" "$args" "$result" >>"$out/rows.jsonl" <<'EOF'
import json, sys
name, args, path = sys.argv[1:]
print(json.dumps({"row": name, "command": f"python -m aed_jax.bench {args}", **json.load(open(path))}))
EOF
    tail -n 1 "$out/rows.jsonl"
  else
    echo "FAILED or timed out ($limit s): see $out/bench.log"; tail -5 "$out/bench.log"
  fi
done
