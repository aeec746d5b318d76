#!/usr/bin/env bash
# The main job on the embedded default: the whole Kubeflow training DAG, run locally with kfp.local
# (same components as on a cluster), on RAVDESS from ../shared/data when present, else on a generated
# corpus. Ends with a registered MLflow model version and a summary: metrics, model URI, where the
# MLflow UI is. MLflow on sqlite under artifacts/, Ray in-process, task outputs in artifacts/kfp/.
#
#   DEMO_EPOCHS=30 bash scripts/demo.sh      # longer training
#   DEMO_FULL=1 bash scripts/demo.sh         # params.yaml as is (log-mel CNN-BiGRU: much slower on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
AF=.venv/bin/affectflow
args=()
if [ ! -d ../shared/data/ravdess ]; then
  echo "../shared/data/ravdess not found: generating a demo corpus in demo_data/" >&2
  if [ ! -d demo_data/ravdess ]; then
    .venv/bin/python -c "from affectflow.corpora.demo import make_ravdess_like; make_ravdess_like('demo_data/ravdess', actors=8, clips_per_emotion=4)"
  fi
  args+=(--set paths.data_root=demo_data)
fi
if [ -z "${DEMO_FULL:-}" ]; then
  # The short configuration: eGeMAPS functionals + MLP, minutes on two CPU cores.
  args+=(--set "features.kinds=[egemaps]" --set train.model=egemaps_mlp
         --set "train.epochs=${DEMO_EPOCHS:-15}" --set "train.patience=${DEMO_EPOCHS:-15}"
         --set evaluate.bootstrap=200)
fi
$AF pipeline run --local "${args[@]}"
$AF registry list "${args[@]}"
