"""The training DAG: data stamp -> ingest -> validate -> features -> validate features -> [augment]
[pretrain] -> train -> evaluate -> rescore -> register -> [promote], inside an exit handler that
records how the run ended. Every stage task is the task runner on its row of the stage table.

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

from affectflow.config import ConfigError, Params
from affectflow.features.keys import KINDS, requested_kinds
from affectflow.orchestration.images import image_for
from affectflow.orchestration.ir import PIPELINE_NAME
from affectflow.orchestration.kfp_tracking import TRACKING_SECRET_ENV
from affectflow.orchestration.resources import check_resources, resources_for
from affectflow.orchestration.run_form import (
    DATA_VERSION,
    KFP_TYPES,
    OVERRIDES,
    RUN_FORM,
    base_yaml,
    run_form_defaults,
)
from affectflow.stages import STAGES
from affectflow.stages.runner import feature_kinds
from components import params as params_component
from components.augment import augment, skip_augment
from components.evaluate import evaluate
from components.features import features, gather_features, plan_features
from components.ingest import data_stamp, ingest
from components.pretrain import pretrain, skip_pretrain
from components.register import promote, register, rescore
from components.status import record_run_status
from components.train import train
from components.validate import validate, validate_features

GPU_RESOURCE = "nvidia.com/gpu"
S3_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                          "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
"""Secret key -> environment variable, from `pipeline.s3_secret` (the chart's S3 Secret: what
boto3, MLflow, DVC and Ray's pyarrow S3 read). Required: a data task without them fails to start."""
MLFLOW_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
"""Required key of `pipeline.mlflow_secret` on the tasks that log or register: it replaces
tracking.uri inside the tasks (affectflow.orchestration.kfp_tracking.tracking_from_env)."""
MLFLOW_AUTH_KEYS = {k: k for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
"""Optional keys of the same Secret, for an external tracking server with basic auth (the chart's
in-cluster server has none, so its Secret lacks them)."""
RAY_ENV = ("RAY_ADDRESS", "AFFECTFLOW_RAY_STORAGE")
"""Keys of `pipeline.env_config_map` (the chart's ConfigMap) the train task reads: the KubeRay
client address and the shared storage of Ray runs and checkpoints."""
WRITABLE_DIRS = {"kfp-minio": "/minio", "kfp-s3": "/s3", "kfp-gcs": "/gcs", "tmp": "/tmp"}
"""emptyDirs of every task: the KFP launcher's local artifact paths and /tmp, writable for the
non-root UID whatever the image or a read-only root filesystem."""
DATA_TASKS = frozenset({*STAGES, "validate-features", "plan-features", "gather-features", "data-stamp"}) - {
    "register", "promote"}
"""Tasks that read or write data (S3 corpora, features, Ray storage, MLflow's S3 artifacts); data-stamp
lists the s3:// corpora (the cluster rehearsal found it without credentials)."""
TRACKING_TASKS = frozenset({s for s, row in STAGES.items() if "tracking" in row.sections}
                           | {"record-run-status", "resolve-params"})
"""Tasks that log to or read from MLflow (resolve-params checks the server before anything runs;
rescore reads the champion from the registry: without the Secret it saw an empty sqlite registry
inside its pod and never re-scored)."""
RETRY_BACKOFF = "30s"
"""First wait before a retry (doubles each time): long enough for a node or S3 hiccup to pass."""
FORM_NAMES = [p.name for p in RUN_FORM] + [OVERRIDES, DATA_VERSION]
SHM_SIZE = "2Gi"
"""/dev/shm (a memory-backed emptyDir) of a task with more than one GPU; the container runtime's 64 MiB
default stalls NCCL and DataLoader workers. As the chart's ray.gpuWorkers.shmSize."""


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


def task_uses_gpu(stage: str, p: Params) -> bool:
    """Whether a stage's task runs in the GPU image (with `pipeline.gpu_limit` GPUs): the stage table's
    GPU stages, except train when its Ray workers run on the KubeRay cluster (`pipeline.ray_cluster`:
    they hold the GPUs, the submitting pod needs none), plus features when log-mel runs on the GPU."""
    cfg = p.pipeline
    if stage == "features":
        f = p.features
        torch_kinds = [k for k in requested_kinds(p, feature_kinds(p)) if KINDS[k].engine == "logmel"]
        return cfg.features_on_gpu == "always" or (
            cfg.features_on_gpu == "auto" and cfg.gpu_limit > 0 and bool(torch_kinds) and f.device != "cpu")
    if stage == "train" and cfg.ray_cluster:
        return False
    return stage in STAGES and STAGES[stage].gpu


def check_compile_settings(p: Params) -> None:
    """Settings that contradict each other at compile time (errors name the keys)."""
    if p.pipeline.ray_cluster and p.train.num_workers == 0:
        raise ConfigError("pipeline.ray_cluster: true needs train.num_workers >= 1: with 0 the model trains "
                          "inside the train pod, which then runs in the CPU image without a GPU")
    check_resources(p.pipeline)  # known tasks; request <= limit, per task


def _task_name(task: Any) -> str:
    return str(task.component_spec.name)


def _secrets_of(task: str) -> tuple[str, ...]:
    return tuple(s for s, tasks in (("s3", DATA_TASKS), ("mlflow", TRACKING_TASKS)) if task in tasks)


def _resources(task: Any, p: Params, name: str, gpu: bool) -> None:
    res = resources_for(p.pipeline, name)
    task.set_cpu_request(res.cpu_request).set_cpu_limit(res.cpu_limit)
    task.set_memory_request(res.memory_request).set_memory_limit(res.memory_limit)
    if res.timeout_s:
        kubernetes.set_timeout(task, res.timeout_s)
    count = p.pipeline.gpu_limit if res.gpu is None else res.gpu
    if gpu and count > 0:
        task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(count)
        if count > 1:  # NCCL and the data loaders of several GPU processes share memory through /dev/shm
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=SHM_SIZE)
        for key, value in p.pipeline.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in p.pipeline.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator"),
                                      value=tol.get("value"), effect=tol.get("effect"),
                                      toleration_seconds=tol.get("toleration_seconds"))


def _platform(task: Any, p: Params, *, gpu: bool, secrets: tuple[str, ...] | None = None,
              retry: bool = True) -> Any:
    """Caching, retries, credentials, resources, writable launcher paths, non-root and (GPU tasks)
    accelerator, node selector, tolerations. `secrets=None`: what the task needs (`DATA_TASKS` get
    the S3 Secret, `TRACKING_TASKS` the MLflow one), mounted as required."""
    cfg = p.pipeline
    name = _task_name(task)
    task.set_caching_options(True)
    if retry and cfg.retries > 0:
        task.set_retry(cfg.retries, backoff_duration=RETRY_BACKOFF, backoff_factor=2.0)
    for kind in _secrets_of(name) if secrets is None else secrets:
        if kind == "s3":
            kubernetes.use_secret_as_env(task, secret_name=cfg.s3_secret, secret_key_to_env=S3_KEYS)
        elif kind == "mlflow":
            kubernetes.use_secret_as_env(task, secret_name=cfg.mlflow_secret, secret_key_to_env=MLFLOW_KEYS)
            kubernetes.use_secret_as_env(task, secret_name=cfg.mlflow_secret, secret_key_to_env=MLFLOW_AUTH_KEYS,
                                         optional=True)
            if cfg.require_tracking_server:
                task.set_env_variable(TRACKING_SECRET_ENV, cfg.mlflow_secret)
    if name == "train":
        keys = RAY_ENV if cfg.ray_cluster else RAY_ENV[1:]
        kubernetes.use_config_map_as_env(task, config_map_name=cfg.env_config_map,
                                         config_map_key_to_env={k: k for k in keys})
    _resources(task, p, name, gpu)
    for volume, path in WRITABLE_DIRS.items():
        kubernetes.empty_dir_mount(task, volume_name=volume, mount_path=path)
    kubernetes.set_security_context(task, run_as_user=cfg.run_as_user, run_as_group=cfg.run_as_user,
                                    run_as_non_root=True)
    # The image follows the decision, not the component's decorator: features move to the GPU image
    # when log-mel runs there, train to the CPU image when its workers run on KubeRay.
    task.set_container_image((cfg.image_gpu or image_for("gpu")) if gpu else (cfg.image_cpu or image_for("cpu")))
    return task


def build_pipeline(p: Params) -> Any:
    """The pipeline for params `p` (run-form defaults, the compiled-in params.yaml, compile-time settings)."""
    check_compile_settings(p)
    resolve = params_component.make()
    base = base_yaml(p)

    def body(*args: Any) -> None:
        v = dict(zip(FORM_NAMES, args, strict=True))
        data_version = v.pop(DATA_VERSION)

        exit_task = record_run_status(tracking_uri=p.tracking.uri, experiment=p.tracking.experiment,
                                      artifact_location=p.tracking.artifact_location)
        _platform(exit_task, p, gpu=False, secrets=("mlflow",), retry=False)
        exit_task.set_caching_options(False)
        exit_task.set_display_name("record run status")

        with dsl.ExitHandler(exit_task, name="affectflow-run"):
            cfg = _platform(resolve(base=base, **v), p, gpu=False, retry=False)
            cfg.set_display_name("resolve params")
            conf = cfg.outputs
            stamp = _platform(data_stamp(config=conf["ingest"], data_version=data_version), p, gpu=False)
            stamp.set_caching_options(False)  # it looks at the data as it is now
            stamp.set_display_name("data stamp")
            ing = _platform(ingest(config=conf["ingest"], data_version=stamp.output), p, gpu=False)
            manifest = ing.outputs["manifest"]
            val = _platform(validate(config=conf["validate"], manifest=manifest), p, gpu=False)
            val.set_display_name("validate manifest")
            shard_plan = _platform(plan_features(config=conf["features"], manifest=manifest), p, gpu=False)
            shard_plan.after(val)
            shard_plan.set_display_name("plan feature shards")
            with dsl.ParallelFor(shard_plan.output, name="feature-shards",
                                 parallelism=p.pipeline.features_parallelism) as shard:
                part = _platform(features(config=conf["features"], manifest=manifest, shard=shard), p,
                                 gpu=task_uses_gpu("features", p))
            feat = _platform(gather_features(config=conf["features"], manifest=manifest,
                                             parts=dsl.Collected(part.outputs["part"])), p, gpu=False)
            feat.set_display_name("gather features")
            store = feat.outputs["store"]
            val_feat = _platform(validate_features(config=conf["validate"], manifest=manifest, store=store), p,
                                 gpu=False)
            val_feat.set_display_name("validate features")

            with dsl.If(v["augment"] == True, name="augmentation-on"):  # noqa: E712 (KFP condition)
                aug = _platform(augment(config=conf["augment"], manifest=manifest, store=store), p, gpu=True)
                aug.after(val_feat)
            with dsl.Else(name="augmentation-off"):
                no_aug = _platform(skip_augment(), p, gpu=False, secrets=(), retry=False)
            with dsl.If(v["dann"] == True, name="dann-on"):  # noqa: E712
                pre = _platform(pretrain(config=conf["pretrain"], manifest=manifest, store=store), p, gpu=True)
                pre.after(val_feat)
            with dsl.Else(name="dann-off"):
                no_pre = _platform(skip_pretrain(), p, gpu=False, secrets=(), retry=False)

            trn = _platform(train(config=conf["train"], manifest=manifest, store=store,
                                  synthetic=dsl.OneOf(aug.outputs["synthetic"], no_aug.outputs["synthetic"]),
                                  encoder=dsl.OneOf(pre.outputs["encoder"], no_pre.outputs["encoder"])),
                            p, gpu=task_uses_gpu("train", p))
            trn.after(val_feat)
            ev = _platform(evaluate(config=conf["evaluate"], manifest=manifest, store=store,
                                    model=trn.outputs["model"]), p, gpu=False)
            rs = _platform(rescore(config=conf["rescore"], manifest=manifest, store=store, model=trn.outputs["model"],
                                   evaluation=ev.outputs["evaluation"]), p, gpu=False)
            rs.set_caching_options(False)  # depends on the registry's champion, not only on its inputs
            rs.set_display_name("rescore champion")
            reg = _platform(register(config=conf["register"], model=trn.outputs["model"],
                                     evaluation=ev.outputs["evaluation"], rescore=rs.outputs["rescore"],
                                     data_version=stamp.output), p, gpu=False, secrets=("mlflow",),
                            retry=False)
            reg.set_caching_options(False)  # every run registers its own version
            with dsl.If(reg.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                pro = _platform(promote(config=conf["promote"], registration=reg.outputs["result"],
                                        run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER), p, gpu=False,
                                secrets=("mlflow",), retry=False)
                pro.set_caching_options(False)

    body.__signature__ = _signature(p)  # type: ignore[attr-defined]
    body.__name__ = "affectflow_train"
    body.__doc__ = _docstring()
    return dsl.pipeline(name=PIPELINE_NAME, description=body.__doc__.splitlines()[0])(body)
