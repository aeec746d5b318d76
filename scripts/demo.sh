#!/usr/bin/env bash
# The main job on the embedded default: RAVDESS from ../shared/data when present, else a generated
# corpus. Everything runs locally: MLflow on sqlite under artifacts/, Ray in-process.
set -euo pipefail
cd "$(dirname "$0")/.."
AF=.venv/bin/affectflow
args=()
if [ ! -d ../shared/data/ravdess ]; then
  echo "../shared/data/ravdess not found: generating a demo corpus in demo_data/" >&2
  .venv/bin/python -c "from affectflow.synth import make_ravdess_like; make_ravdess_like('demo_data/ravdess', actors=8, clips_per_emotion=4)"
  args+=(--set paths.data_root=demo_data)
fi
args+=(--set train.epochs=${DEMO_EPOCHS:-8})
$AF ingest "${args[@]}"
$AF validate "${args[@]}"
$AF features "${args[@]}"
$AF validate "${args[@]}" --features artifacts/features
$AF train "${args[@]}"
$AF evaluate "${args[@]}"
