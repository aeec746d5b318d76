"""The training DAG: ingest -> validate -> features -> [augment] [pretrain] -> train -> evaluate ->
register -> [promote], inside an exit handler that records how the run ended.

`build_pipeline(params)` returns the pipeline with one run-form field per tunable of params.yaml
(defaults = its values) plus `data_version`. Compile-time settings come from the `pipeline`
section: images, GPU limit, node selector and tolerations of the GPU tasks, the Kubernetes
secrets with S3 and MLflow credentials, retries. The Kubernetes-specific settings live in the IR's
platform spec, which kfp.local ignores, so the same object runs embedded and on a cluster.
"""

import inspect
from typing import Any

from kfp import dsl, kubernetes

from affectflow.config import Params
from affectflow.orchestration.pipeline import DATA_VERSION, PIPELINE_NAME, Tunable, tunables
from components import params as params_component
from components.augment import augment, skip_augment
from components.evaluate import evaluate
from components.features import features
from components.ingest import ingest
from components.pretrain import pretrain, skip_pretrain
from components.register import promote, register
from components.status import record_run_status
from components.train import train
from components.validate import validate

GPU_RESOURCE = "nvidia.com/gpu"
S3_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                          "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
"""Secret key -> environment variable, from `pipeline.s3_secret` (the chart's S3 Secret: what
boto3, MLflow and DVC read). Optional keys: a Secret without a region still starts the pod, and
missing credentials fail in affectflow.storage.s3 with an error that says so."""
MLFLOW_KEYS = {k: k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
"""Secret key -> environment variable, from `pipeline.mlflow_secret`, each optional (an MLflow
server without authentication has no user/password). MLFLOW_TRACKING_URI, when set, replaces
tracking.uri inside the tasks (affectflow.orchestration.kfp_io.stage_params)."""
RETRY_BACKOFF = "30s"
"""First wait before a retry (doubles each time): long enough for a node or S3 hiccup to pass."""


def _signature(items: list[Tunable]) -> inspect.Signature:
    kinds = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict, "yaml": str}
    fields = [inspect.Parameter(t.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=t.encode(t.default),
                                annotation=kinds[t.kind]) for t in items]
    fields.append(inspect.Parameter(DATA_VERSION, inspect.Parameter.POSITIONAL_OR_KEYWORD, default="",
                                    annotation=str))
    return inspect.Signature(fields)


def _docstring(items: list[Tunable]) -> str:
    """Run-form help: KFP takes parameter descriptions from the Args section of the docstring."""
    lines = ["Speech emotion recognition: data gate, features, optional GAN augmentation and DANN,",
             "training, evaluation and gated MLflow registration.", "", "Args:"]
    lines += [f"    {t.name}: params.yaml {t.key}" + (" (YAML text)" if t.kind == "yaml" else "")
              for t in items]
    lines.append(f"    {DATA_VERSION}: data stamp; a new value re-runs ingest instead of reusing its cache")
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
    """The pipeline for params `p` (run-form defaults and compile-time settings)."""
    items = tunables(p)
    names = [t.name for t in items] + [DATA_VERSION]
    resolve = params_component.make(items)

    def body(*args: Any) -> None:
        v = dict(zip(names, args, strict=True))
        data_version = v.pop(DATA_VERSION)

        exit_task = record_run_status(tracking_uri=v["tracking__uri"], experiment=v["tracking__experiment"])
        _platform(exit_task, p, gpu=False, secrets=("mlflow",), retry=False)
        exit_task.set_caching_options(False)
        exit_task.set_display_name("record run status")

        with dsl.ExitHandler(exit_task, name="affectflow-run"):
            cfg = _platform(resolve(**v), p, gpu=False, secrets=(), retry=False)
            cfg.set_display_name("resolve params")
            conf = cfg.outputs
            ing = _platform(ingest(config=conf["ingest"], data_version=data_version), p, gpu=False)
            val = _platform(validate(config=conf["validate"], manifest=ing.outputs["manifest"]), p, gpu=False)
            manifest = ing.outputs["manifest"]
            feat = _platform(features(config=conf["features"], manifest=manifest), p, gpu=False)
            feat.after(val)
            store = feat.outputs["store"]

            with dsl.If(v["augment__enabled"] == True, name="augmentation-on"):  # noqa: E712 (KFP condition)
                aug = _platform(augment(config=conf["augment"], manifest=manifest, store=store), p, gpu=True)
            with dsl.Else(name="augmentation-off"):
                no_aug = skip_augment().set_caching_options(True)
            with dsl.If(v["pretrain__enabled"] == True, name="dann-on"):  # noqa: E712
                pre = _platform(pretrain(config=conf["pretrain"], manifest=manifest, store=store), p, gpu=True)
            with dsl.Else(name="dann-off"):
                no_pre = skip_pretrain().set_caching_options(True)

            trn = _platform(train(config=conf["train"], manifest=manifest, store=store,
                                  synthetic=dsl.OneOf(aug.outputs["synthetic"], no_aug.outputs["synthetic"]),
                                  encoder=dsl.OneOf(pre.outputs["encoder"], no_pre.outputs["encoder"])),
                            p, gpu=True)
            ev = _platform(evaluate(config=conf["evaluate"], manifest=manifest, store=store,
                                    model=trn.outputs["model"]), p, gpu=False)
            reg = _platform(register(params=cfg.outputs["params"], model=trn.outputs["model"],
                                     evaluation=ev.outputs["evaluation"]), p, gpu=False, secrets=("mlflow",),
                            retry=False)
            reg.set_caching_options(False)  # every run registers its own version
            with dsl.If(reg.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                pro = _platform(promote(params=cfg.outputs["params"], registration=reg.outputs["result"],
                                        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), p, gpu=False,
                                secrets=("mlflow",), retry=False)
                pro.set_caching_options(False)

    body.__signature__ = _signature(items)  # type: ignore[attr-defined]
    body.__name__ = "affectflow_train"
    body.__doc__ = _docstring(items)
    return dsl.pipeline(name=PIPELINE_NAME, description=body.__doc__.splitlines()[0])(body)
