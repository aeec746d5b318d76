"""Stage: recognizer training. `plan` (driver: rows, classes, normalisation, run name), `loop`
(every worker: epochs, checkpoints, the stopping rule), `driver` (Ray Train), `stage` (the stage
function). The k-fold study is `affectflow.studies.kfold`.
"""
