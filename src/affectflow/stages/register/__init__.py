"""The register tail: three rows of the stage table, run in this order everywhere.

    rescore   (rescore.py)   the champion scored on the challenger's test manifest when it was
                             scored on another (a grown corpus); evaluate's code via the table
    register  (stage.py)     a registry version as `challenger`, the re-score recorded, the gate
    promote   (promote.py)   `champion` moves when the gate passed; switched by registry.auto_promote

`affectflow register` runs the three (`affectflow.stages.runner.run_chain`), dvc.yaml has them as
stages, and the Kubeflow DAG as tasks (`kfp_io.run_task` each). The registry is
`affectflow.tracking.registry`, the pure gate `affectflow.tracking.gate`; the typed results are
`result.py`.
"""

TAIL = ("rescore", "register", "promote")
"""The rows of the tail, in order."""
