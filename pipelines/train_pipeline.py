"""The training DAG: data stamp -> ingest -> validate -> features -> validate features -> [augment]
[pretrain] -> train -> evaluate -> rescore champion -> register -> [promote], inside an exit handler
that records how the run ended.

The retraining loop: a recurring run's data stamp changes when objects under the corpus roots do,
so ingest (and everything after it) runs on the new data; the champion is re-scored on the new test
manifest when it was scored on another one, and the gate compares both on that one set.

`build_pipeline(params)` returns the pipeline for params.yaml `params`: the curated run form
(`affectflow.orchestration.run_form.RUN_FORM`, defaults = its values, plus `params_overrides` and
`data_version`), the full params.yaml compiled in as a constant, and the compile-time settings of
the `pipeline` section: images, GPU limit, node selector and tolerations of the GPU tasks, the
Kubernetes secrets with S3 and MLflow credentials, retries. The Kubernetes-specific settings live
in the IR's platform spec, which kfp.local ignores, so the same object runs embedded and on a cluster.
"""

import inspect
from typing import Any

from kfp import dsl, kubernetes

from affectflow.config import Params
from affectflow.orchestration.ir import PIPELINE_NAME
from affectflow.orchestration.run_form import (
    DATA_VERSION,
    KFP_TYPES,
    OVERRIDES,
    RUN_FORM,
    base_yaml,
    run_form_defaults,
)
from components import params as params_component
from components.augment import augment, skip_augment
from components.evaluate import evaluate
from components.features import features
from components.ingest import data_stamp, ingest
from components.pretrain import pretrain, skip_pretrain
from components.register import promote, register, rescore_champion
from components.status import record_run_status
from components.train import train
from components.validate import validate, validate_features

GPU_RESOURCE = "nvidia.com/gpu"
S3_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                          "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
"""Secret key -> environment variable, from `pipeline.s3_secret` (the chart's S3 Secret: what
boto3, MLflow and DVC read)."""
MLFLOW_KEYS = {k: k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
"""Secret key -> environment variable, from `pipeline.mlflow_secret`. MLFLOW_TRACKING_URI, when set,
replaces tracking.uri inside the tasks (affectflow.orchestration.kfp_io.stage_params)."""
RETRY_BACKOFF = "30s"
"""First wait before a retry (doubles each time): long enough for a node or S3 hiccup to pass."""
FORM_NAMES = [p.name for p in RUN_FORM] + [OVERRIDES, DATA_VERSION]


def _signature(p: Params) -> inspect.Signature:
    defaults = run_form_defaults(p)
    fields = [inspect.Parameter(rp.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=defaults[rp.name],
                                annotation=KFP_TYPES[rp.kind()]) for rp in RUN_FORM]
    fields += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str)
               for name in (OVERRIDES, DATA_VERSION)]
    return inspect.Signature(fields)


def _docstring() -> str:
    """Run-form help: KFP takes parameter descriptions from the Args section of the docstring."""
    lines = ["Speech emotion recognition: data gate, features, optional GAN augmentation and DANN,",
             "training, evaluation and gated MLflow registration.", "", "Args:"]
    lines += [f"    {p.name}: {p.description} (params.yaml {p.key}"
              + ("; YAML text" if p.kind() == "yaml" else "") + ")" for p in RUN_FORM]
    lines.append(f"    {OVERRIDES}: Any other setting, as YAML: dotted keys or nested sections, e.g. "
                 "'train.patience: 5' (errors name the key).")
    lines.append(f"    {DATA_VERSION}: Optional data label (e.g. a DVC revision), recorded before the stamp of the "
                 "corpus files the run computes itself; new data re-runs ingest without it.")
    return "\n".join(lines)


def _platform(task: Any, p: Params, *, gpu: bool, secrets: tuple[str, ...] = ("s3", "mlflow"),
              retry: bool = True) -> Any:
    """Caching, retries, credentials and (GPU tasks) accelerator, node selector, tolerations."""
    cfg = p.pipeline
    task.set_caching_options(True)
    if retry and cfg.retries > 0:
        task.set_retry(cfg.retries, backoff_duration=RETRY_BACKOFF, backoff_factor=2.0)
    if "s3" in secrets:
        kubernetes.use_secret_as_env(task, secret_name=cfg.s3_secret, secret_key_to_env=S3_KEYS, optional=True)
    if "mlflow" in secrets:
        kubernetes.use_secret_as_env(task, secret_name=cfg.mlflow_secret, secret_key_to_env=MLFLOW_KEYS,
                                     optional=True)
    if gpu and cfg.gpu_limit > 0:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(cfg.gpu_limit)
        for key, value in cfg.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in cfg.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                      value=tol.get("value"), effect=tol.get("effect"),
                                      toleration_seconds=tol.get("toleration_seconds"))
    if gpu and cfg.image_gpu:
        task.set_container_image(cfg.image_gpu)
    elif not gpu and cfg.image_cpu:
        task.set_container_image(cfg.image_cpu)
    return task


def build_pipeline(p: Params) -> Any:
    """The pipeline for params `p` (run-form defaults, the compiled-in params.yaml, compile-time settings)."""
    resolve = params_component.make()
    base = base_yaml(p)

    def body(*args: Any) -> None:
        v = dict(zip(FORM_NAMES, args, strict=True))
        data_version = v.pop(DATA_VERSION)

        exit_task = record_run_status(tracking_uri=p.tracking.uri, experiment=p.tracking.experiment)
        _platform(exit_task, p, gpu=False, secrets=("mlflow",), retry=False)
        exit_task.set_caching_options(False)
        exit_task.set_display_name("record run status")

        with dsl.ExitHandler(exit_task, name="affectflow-run"):
            cfg = _platform(resolve(base=base, **v), p, gpu=False, secrets=(), retry=False)
            cfg.set_display_name("resolve params")
            conf = cfg.outputs
            stamp = _platform(data_stamp(config=conf["ingest"], data_version=data_version), p, gpu=False)
            stamp.set_caching_options(False)  # it looks at the data as it is now
            stamp.set_display_name("data stamp")
            ing = _platform(ingest(config=conf["ingest"], data_version=stamp.output), p, gpu=False)
            manifest = ing.outputs["manifest"]
            val = _platform(validate(config=conf["validate"], manifest=manifest), p, gpu=False)
            val.set_display_name("validate manifest")
            feat = _platform(features(config=conf["features"], manifest=manifest), p, gpu=False)
            feat.after(val)
            store = feat.outputs["store"]
            val_feat = _platform(validate_features(config=conf["validate"], manifest=manifest, store=store), p,
                                 gpu=False)
            val_feat.set_display_name("validate features")

            with dsl.If(v["augment"] == True, name="augmentation-on"):  # noqa: E712 (KFP condition)
                aug = _platform(augment(config=conf["augment"], manifest=manifest, store=store), p, gpu=True)
                aug.after(val_feat)
            with dsl.Else(name="augmentation-off"):
                no_aug = skip_augment().set_caching_options(True)
            with dsl.If(v["dann"] == True, name="dann-on"):  # noqa: E712
                pre = _platform(pretrain(config=conf["pretrain"], manifest=manifest, store=store), p, gpu=True)
                pre.after(val_feat)
            with dsl.Else(name="dann-off"):
                no_pre = skip_pretrain().set_caching_options(True)

            trn = _platform(train(config=conf["train"], manifest=manifest, store=store,
                                  synthetic=dsl.OneOf(aug.outputs["synthetic"], no_aug.outputs["synthetic"]),
                                  encoder=dsl.OneOf(pre.outputs["encoder"], no_pre.outputs["encoder"])),
                            p, gpu=True)
            trn.after(val_feat)
            ev = _platform(evaluate(config=conf["evaluate"], manifest=manifest, store=store,
                                    model=trn.outputs["model"]), p, gpu=False)
            rs = _platform(rescore_champion(evaluate_config=conf["evaluate"], register_config=conf["register"],
                                            manifest=manifest, store=store, model=trn.outputs["model"],
                                            evaluation=ev.outputs["evaluation"]), p, gpu=False)
            rs.set_caching_options(False)  # depends on the registry's champion, not only on its inputs
            rs.set_display_name("rescore champion")
            reg = _platform(register(config=conf["register"], model=trn.outputs["model"],
                                     evaluation=ev.outputs["evaluation"], rescore=rs.outputs["rescore"],
                                     data_version=stamp.output), p, gpu=False, secrets=("mlflow",),
                            retry=False)
            reg.set_caching_options(False)  # every run registers its own version
            with dsl.If(reg.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                pro = _platform(promote(config=conf["register"], registration=reg.outputs["result"],
                                        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), p, gpu=False,
                                secrets=("mlflow",), retry=False)
                pro.set_caching_options(False)

    body.__signature__ = _signature(p)  # type: ignore[attr-defined]
    body.__name__ = "affectflow_train"
    body.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=body.__doc__.splitlines()[0])(body)
