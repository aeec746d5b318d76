"""Training, shared storage: where a run's checkpoints live, and how Ray workers on other machines
get the run's inputs.

Checkpoints live in `<root>/<run name>/`, root = `train.checkpoint_dir`, else $AFFECTFLOW_RAY_STORAGE
(the chart's `s3://<bucket>/ray`, set in the train pod), else `<paths.workdir>/checkpoints`. The run
name hashes configuration and data, so a retried pod or a re-submitted run finds its checkpoints,
and they stay out of the task's output: the Model artifact holds the model folder, not optimiser
state. Ray workers (`num_workers >= 1`) persist through Ray Train (`RunConfig.storage_path` = root);
in local mode the loop writes the epoch folders itself and, with an s3:// root, works in a local
mirror that is pulled before the run and pushed after every epoch.

Inputs: a Ray worker on another node cannot read the train pod's feature folder, so on a Ray cluster
(RAY_ADDRESS) the driver packs exactly the arrays the run reads (training and validation features,
the selected synthetic rows, the pretrained encoder's weights) into one `.npz` at
`<root>/inputs/<run name>.npz` and every worker reads it from there. One object per run: log-mel
of a whole corpus is too big for Ray's task arguments, and thousands of small feature files would
cost a request each per worker.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from affectflow.storage import atomic_path
from affectflow.storage.s3 import S3Store, S3Uri, is_s3

if TYPE_CHECKING:
    from affectflow.config import Params
    from affectflow.stages.train.plan import WorkerConfig

log = logging.getLogger(__name__)

RAY_STORAGE_ENV = "AFFECTFLOW_RAY_STORAGE"
"""Shared storage (s3://... or a mounted volume) of Ray Train runs and checkpoints: the chart's
ConfigMap sets it in the train pod, on the Ray head and on the workers."""
RAY_ADDRESS_ENV = "RAY_ADDRESS"
"""The Ray cluster to submit to (the chart's `http://<release>-ray-head-svc...:8265`: a Ray job; a `ray://` address is Ray Client); empty or
unset: Ray runs in this process / on this machine."""
RUN_ID_FILE = "mlflow_run_id"
STATE_FILE = "state.pt"
_EPOCH = re.compile(r"^epoch_\d+/")


def ray_address() -> str:
    """RAY_ADDRESS, empty meaning unset (the chart's ConfigMap holds "" when Ray is disabled)."""
    return os.environ.get(RAY_ADDRESS_ENV, "").strip()


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def checkpoint_root(params: Params) -> str:
    """Where runs keep their checkpoints: train.checkpoint_dir, $AFFECTFLOW_RAY_STORAGE, or
    <paths.workdir>/checkpoints (local roots made absolute: Ray wants absolute storage paths)."""
    root = params.train.checkpoint_dir.strip() or os.environ.get(RAY_STORAGE_ENV, "").strip()
    if not root:
        workdir = params.paths.workdir
        root = join(workdir, "checkpoints") if is_s3(workdir) else str(Path(workdir) / "checkpoints")
    return root.rstrip("/") if is_s3(root) else str(Path(root).expanduser().resolve())


def run_folder(root: str, run_name: str) -> tuple[str, str]:
    """(durable location, local working folder) of a run's checkpoints: the same folder for a local
    root; for s3:// a mirror under the temp folder (the pod's writable /tmp)."""
    uri = join(root, run_name)
    if not is_s3(uri):
        return uri, uri
    return uri, str(Path(tempfile.gettempdir()) / "affectflow-checkpoints" / run_name)


def _remote(cfg: WorkerConfig) -> tuple[S3Store, S3Uri, dict[str, int]] | None:
    if not cfg.ckpt_uri:
        return None
    store = S3Store()
    u = S3Uri.parse(cfg.ckpt_uri)
    prefix = u.prefix
    return store, u, {o.key[len(prefix):]: o.size for o in store.list(join(cfg.ckpt_uri, "")) if o.key.startswith(prefix)}


def pull(cfg: WorkerConfig, epochs: bool) -> int:
    """Fill the local mirror from the run's s3:// folder: the MLflow run id and, in local mode
    (`epochs`), the latest epoch's checkpoint. Returns the number of files fetched."""
    remote = _remote(cfg)
    if remote is None:
        return 0
    store, _, objects = remote
    local = Path(cfg.ckpt_dir)
    shutil.rmtree(local, ignore_errors=True)  # the remote folder is the truth
    local.mkdir(parents=True, exist_ok=True)
    wanted = [RUN_ID_FILE] if RUN_ID_FILE in objects else []
    if epochs:
        wanted += sorted(k for k in objects if _EPOCH.match(k) and k.endswith("/" + STATE_FILE))[-1:]
    for rel in wanted:
        store.download(join(cfg.ckpt_uri or "", rel), local / rel)
    if wanted:
        log.warning("checkpoints of %s fetched from %s: %s", Path(cfg.ckpt_dir).name, cfg.ckpt_uri, wanted)
    return len(wanted)


def push(cfg: WorkerConfig, prune: bool) -> int:
    """Upload what the local mirror has that the run's s3:// folder lacks (epoch folders are written
    once; the run id always), then, with `prune`, delete remote epochs the mirror no longer keeps:
    new ones first, so a complete checkpoint is there at every moment. Returns files uploaded."""
    remote = _remote(cfg)
    if remote is None:
        return 0
    store, _, objects = remote
    local = Path(cfg.ckpt_dir)
    files = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()} if local.is_dir() else {}
    sent = 0
    for rel, path in sorted(files.items()):
        if rel == RUN_ID_FILE or objects.get(rel) != path.stat().st_size:
            store.upload(path, join(cfg.ckpt_uri or "", rel))
            sent += 1
    if prune:
        stale = [join(cfg.ckpt_uri or "", rel) for rel in objects if _EPOCH.match(rel) and rel not in files]
        if stale:
            store.delete(stale)
    return sent


# ----------------------------------------------------------------------------- inputs of remote workers
@dataclass
class WorkerInputs:
    """The raw arrays one worker trains on (before normalisation)."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    synthetic: np.ndarray | None
    """The selected synthetic rows (cfg.synthetic.rows), in that order."""
    weights: dict[str, torch.Tensor] | None
    """The pretrained model's state_dict (cfg.pretrained)."""
    copies: list[list[np.ndarray]] = field(default_factory=list)
    """Recording-condition copy k (1..cfg.robustness_copies) of every training clip: copies[k - 1]."""


def local_inputs(cfg: WorkerConfig) -> WorkerInputs:
    """From the driver's own folders (local mode, a local Ray)."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.contracts.model_folder import load_weights
    from affectflow.contracts.synthetic import read_synthetic

    fs = FeatureSet(cfg.features_dir)
    syn = cfg.synthetic
    x_syn = (read_synthetic(syn.path, kept_only=False).X[np.asarray(syn.rows, np.int64)]
             if syn and syn.rows else None)
    return WorkerInputs(train=fs.load(cfg.feature, cfg.train_ids), val=fs.load(cfg.feature, cfg.val_ids),
                        synthetic=x_syn, weights=load_weights(cfg.pretrained) if cfg.pretrained else None,
                        copies=[fs.load(f"{cfg.feature}@r{k}", cfg.train_ids)
                                for k in range(1, cfg.robustness_copies + 1)])


def write_inputs(cfg: WorkerConfig, uri: str) -> str:
    """Pack the run's inputs into one .npz at `uri` (s3:// or a shared folder); kept when already
    there, since the run name (in `uri`) hashes the data it holds."""
    store = S3Store() if is_s3(uri) else None
    if (store.exists(uri) if store else Path(uri).is_file()):
        return uri
    data = local_inputs(cfg)
    arrays: dict[str, np.ndarray] = {f"train/{i}": a for i, a in enumerate(data.train)}
    arrays.update({f"val/{i}": a for i, a in enumerate(data.val)})
    if data.synthetic is not None:
        arrays["synthetic"] = data.synthetic
    for key, t in (data.weights or {}).items():
        arrays[f"weights/{key}"] = t.detach().cpu().numpy()
    for k, copy in enumerate(data.copies, start=1):
        arrays.update({f"copy{k}/{i}": a for i, a in enumerate(copy)})
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "inputs.npz" if store else Path(uri)
        with atomic_path(local) as part, open(part, "wb") as f:
            np.savez(f, **arrays)
        if store:
            store.upload(local, uri)
    return uri


def read_inputs(uri: str, cfg: WorkerConfig) -> WorkerInputs:
    """A worker's inputs from the pack `write_inputs` made (checked against the configuration)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = S3Store().download(uri, Path(tmp) / "inputs.npz") if is_s3(uri) else Path(uri)
        with np.load(path) as z:
            keys = set(z.files)
            n_train, n_val = sum(k.startswith("train/") for k in keys), sum(k.startswith("val/") for k in keys)
            if (n_train, n_val) != (len(cfg.train_ids), len(cfg.val_ids)):
                raise ValueError(f"{uri}: {n_train} training / {n_val} validation arrays, the run has "
                                 f"{len(cfg.train_ids)} / {len(cfg.val_ids)} (field 'train_ids' / 'val_ids')")
            weights = {k[len("weights/"):]: torch.from_numpy(z[k]) for k in sorted(keys) if k.startswith("weights/")}
            return WorkerInputs(train=[z[f"train/{i}"] for i in range(n_train)],
                                val=[z[f"val/{i}"] for i in range(n_val)],
                                synthetic=z["synthetic"] if "synthetic" in keys else None,
                                weights=weights or None,
                                copies=[[z[f"copy{k}/{i}"] for i in range(n_train)]
                                        for k in range(1, cfg.robustness_copies + 1)])


def worker_inputs(cfg: WorkerConfig) -> WorkerInputs:
    return read_inputs(cfg.inputs, cfg) if cfg.inputs else local_inputs(cfg)


def stage_inputs(cfg: WorkerConfig, run_name: str) -> WorkerConfig:
    """The configuration remote workers get: inputs packed on the shared storage."""
    if not is_s3(cfg.storage):
        log.warning("Ray cluster %s with checkpoint storage %s: not s3://, so every Ray node must mount "
                    "this folder (set AFFECTFLOW_RAY_STORAGE or train.checkpoint_dir)", ray_address(), cfg.storage)
    uri = write_inputs(cfg, join(cfg.storage, "inputs", f"{run_name}.npz"))
    return replace(cfg, inputs=uri)
