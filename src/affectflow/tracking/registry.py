"""MLflow model registry with a promotion gate: aliases `challenger` and `champion`, never stages.

Every trained model becomes a version of `registry.model_name` with alias `challenger` and tags
that say what it is (`model_content_hash`: the model folder's content hash), where it came from
(git commit, DVC revision, data version, manifest hashes) and how good it is (UAR, WA, macro-F1,
per-class recall on its test manifest). An identical model (same content hash) is never registered
twice: `register` answers "already registered as vN". The evaluation must name the model it
scored (metrics.json `model`, written by evaluate); a metrics file of another model is refused
with an error that names both.

The gate compares challenger and champion on one test set: the challenger's test manifest, on
which the champion is re-scored when it was scored on another one (a grown corpus; the DAG's
`rescore-champion` task, `affectflow register --manifest --features`, `affectflow.orchestration.rescore`).
Scores on other test sets are kept as `score_on.<test manifest hash>` version tags, so a champion
is re-scored once per test set. `champion` moves when the challenger's UAR beats the champion's by
`registry.min_uar_gain` and no class recall is below `registry.min_class_recall`.

History fits every MLflow backend (registered-model tag values are VARCHAR(5000) on Postgres and
MySQL): each promotion / rollback is its own registered-model tag `event.<seq>` of a few hundred
characters, and `champion_stack_top` names the event whose version holds `champion`; each event
points at the one below it, so `rollback` walks back one event at a time. The registry itself is
the audit log. Tags written before this layout (`champion_history`, `champion_stack`: one JSON list
each) are read and converted at the next promotion or rollback.

What is read from `metrics.json` (written by evaluate): `uar` (required), `wa`, `macro_f1`,
`per_class_recall` ({class: recall}; required when the recall floor is above 0),
`test_manifest_hash` (required for any promotion) and `model` ({content_hash, mlflow_run_id}:
required). `per_class_recall` and `test_manifest_hash` may also sit in the `test` object; a recall
of null (a class absent from the test split) is left out. A metric may be a number or an object
with a `value` / `mean` / `point` field (point estimate with confidence interval).
What is read from `model.json` (written by train): `mlflow_model_uri` / `mlflow_run_id` (also under
an `mlflow` object as `model_uri` / `run_id`, which is what `affectflow.stages.train.stage` writes) to find the
logged model, and lineage (`git_commit`, `dvc_revision`, `manifest_hash`, ...) at the top level or
under `lineage`, used when the training run's tags lack it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.model_folder import content_hash
from affectflow.storage import atomic_write_json, atomic_write_text
from affectflow.tracking.revisions import dvc_revision, git_commit
from affectflow.tracking.uri import client, ensure_store, mlflow_scope, resolve_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
UNKNOWN = "unknown"

# Registered-model tags.
EVENT_PREFIX = "event."
"""`event.<seq, 6 digits>`: one promotion / rollback as compact JSON (at most MAX_EVENT_CHARS)."""
STACK_TOP_TAG = "champion_stack_top"
"""seq of the event whose version is champion; each promotion event names the one `below` it."""
LEGACY_HISTORY_TAG = "champion_history"
"""Earlier layout: one JSON list of every event (overflows VARCHAR(5000) after ~28 events)."""
LEGACY_STACK_TAG = "champion_stack"

# Model-version tags written at registration.
METRIC_TAGS = ("uar", "wa", "macro_f1")
RECALL_TAG = "per_class_recall"
TEST_HASH_TAG = "test_manifest_hash"
CONTENT_HASH_TAG = "model_content_hash"
DATA_VERSION_TAG = "data_version"
SCORE_ON_PREFIX = "score_on."
"""`score_on.<test manifest hash>`: this version's scores on another test set (a re-score)."""
LINEAGE_TAGS = ("git_commit", "dvc_revision", "manifest_hash")
COPIED_LINEAGE = ("git_dirty", "feature_config_hash", "params_hash", "dvc_manifest_md5", "dvc_features_md5")
"""Lineage that `affectflow.tracking.lineage` puts on training runs; copied to the version when present."""

TAG_VALUE_LIMIT = 4000
"""Longest tag value written (free text is cut): under the 5000 characters of the registered-model
tag column on Postgres and MySQL."""
MAX_EVENT_CHARS = 1000
REASON_CHARS = 400
"""Reason text kept in an event (the full reason is on the version's tags)."""

UAR_TOLERANCE = 1e-9
"""Float slack when comparing UAR with champion UAR + margin, so an exact-margin gain passes."""

# The re-score folder (written by affectflow.orchestration.rescore, read by `register`).
RESCORE_PLAN = "plan.json"
RESCORE_CHAMPION = "champion"
"""Sub-folder: evaluate's output for the champion on the comparison test set."""
RESCORE_CHALLENGER = "challenger"
"""Sub-folder: evaluate's output for the challenger, when the comparison set is smaller than its
test split (test speakers the champion trained on are left out)."""


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed (no champion, nothing to roll back, no logged model)."""


class EvaluationMismatch(RegistryError):
    """An evaluation that was not computed for the model it is being used for."""


def _cut(text: str, limit: int = TAG_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- scores and the gate
@dataclass(frozen=True)
class Scores:
    """What the gate compares: one model's test-set scores and which test set they came from."""

    uar: float
    wa: float | None = None
    macro_f1: float | None = None
    per_class_recall: dict[str, float] = field(default_factory=dict)
    test_manifest_hash: str | None = None

    def to_tags(self) -> dict[str, str]:
        tags = {"uar": _fmt(self.uar), TEST_HASH_TAG: self.test_manifest_hash or UNKNOWN,
                RECALL_TAG: json.dumps(self.per_class_recall, sort_keys=True)}
        for key in ("wa", "macro_f1"):
            value = getattr(self, key)
            if value is not None:
                tags[key] = _fmt(value)
        return tags

    def to_record(self, **extra: Any) -> str:
        """One compact JSON value (a `score_on.<hash>` tag)."""
        body = {k: v for k, v in asdict(self).items() if v is not None and k != TEST_HASH_TAG}
        return _compact({**body, **extra})

    @classmethod
    def from_record(cls, text: str, test_hash: str, where: str) -> Scores:
        try:
            d = json.loads(text)
            return cls(uar=float(d["uar"]), wa=None if d.get("wa") is None else float(d["wa"]),
                       macro_f1=None if d.get("macro_f1") is None else float(d["macro_f1"]),
                       per_class_recall={str(k): float(v) for k, v in d.get("per_class_recall", {}).items()},
                       test_manifest_hash=test_hash)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise RegistryError(f"{where}: unreadable score record ({e})") from None

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], where: str) -> Scores:
        """Scores recorded on a model version (`where` names it in errors)."""
        if "uar" not in tags:
            raise RegistryError(f"{where}: tag 'uar' missing (was it registered by affectflow?)")
        try:
            recall = json.loads(tags.get(RECALL_TAG, "{}"))
            return cls(
                uar=float(tags["uar"]),
                wa=float(tags["wa"]) if "wa" in tags else None,
                macro_f1=float(tags["macro_f1"]) if "macro_f1" in tags else None,
                per_class_recall={str(k): float(v) for k, v in recall.items()},
                test_manifest_hash=None if tags.get(TEST_HASH_TAG, UNKNOWN) == UNKNOWN
                else tags[TEST_HASH_TAG],
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise RegistryError(f"{where}: unreadable score tags ({e})") from None


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    champion_version: str | None = None
    """The version the challenger was compared with (None: no champion yet)."""
    test_manifest_hash: str | None = None
    """The one test set both were scored on."""
    challenger_uar: float | None = None
    champion_uar: float | None = None
    rescored: bool = False
    """The champion's score on that set comes from a re-score (not its own evaluation)."""


def _fmt(x: float) -> str:
    return f"{x:.6f}"


def _short(h: str | None) -> str:
    return (h or UNKNOWN)[:12]


def _point(value: Any, path: Path, key: str) -> float:
    """A metric as a number: plain, or the point estimate of {value|mean|point, ci...}."""
    if isinstance(value, Mapping):
        for k in ("value", "mean", "point"):
            if k in value:
                return _point(value[k], path, f"{key}.{k}")
        raise ValueError(f"{path}: field '{key}' has no value/mean/point")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path}: field '{key}' is not a finite number: {value!r}")
    return float(value)


def _read_metrics(path: Path) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: metrics file not found (run `affectflow evaluate`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: top level must be an object")
    return data


def read_scores(metrics_path: str | Path) -> Scores:
    """Scores from evaluate's metrics.json; errors name the file and the field."""
    path = Path(metrics_path)
    data = _read_metrics(path)
    if "uar" not in data:
        raise ValueError(f"{path}: field 'uar' missing")
    test = data.get("test") if isinstance(data.get("test"), Mapping) else {}
    recall_key = "per_class_recall" if "per_class_recall" in data else "test.per_class_recall"
    recall_raw = data.get("per_class_recall", test.get("per_class_recall", {}))
    if not isinstance(recall_raw, Mapping):
        raise ValueError(f"{path}: field '{recall_key}' must be an object {{class: recall}}")
    test_hash = data.get("test_manifest_hash") or test.get("test_manifest_hash") or test.get("manifest_hash")
    return Scores(
        uar=_point(data["uar"], path, "uar"),
        wa=_point(data["wa"], path, "wa") if "wa" in data else None,
        macro_f1=_point(data["macro_f1"], path, "macro_f1") if "macro_f1" in data else None,
        per_class_recall={str(c): _point(v, path, f"{recall_key}.{c}")
                          for c, v in recall_raw.items() if v is not None},
        test_manifest_hash=str(test_hash) if test_hash else None,
    )


def evaluate_gate(challenger: Scores, champion: Scores | None, *, min_uar_gain: float,
                  min_class_recall: float, champion_version: str | None = None,
                  rescored: bool = False) -> GateDecision:
    """The promotion rule, free of MLflow so it can be reasoned about and tested on its own."""
    def refuse(reason: str) -> GateDecision:
        return GateDecision(False, reason, champion_version, challenger.test_manifest_hash, challenger.uar,
                            champion.uar if champion else None, rescored)

    if not challenger.test_manifest_hash:
        return refuse("not promoted (challenger has no test_manifest_hash): cannot tell which test set it "
                      "was scored on")
    if min_class_recall > 0 and not challenger.per_class_recall:
        return refuse(f"not promoted (no per_class_recall): the recall floor {min_class_recall:.3f} cannot "
                      "be checked")
    low = {c: r for c, r in sorted(challenger.per_class_recall.items()) if r < min_class_recall}
    if low:
        listed = ", ".join(f"{c}={r:.3f}" for c, r in low.items())
        return refuse(f"not promoted (class recall below floor {min_class_recall:.3f}: {listed})")
    if champion is None:
        return GateDecision(True, f"no champion yet; UAR {challenger.uar:.4f} and every class recall "
                                  f">= {min_class_recall:.3f}", None, challenger.test_manifest_hash, challenger.uar)
    v = champion_version
    if champion.test_manifest_hash != challenger.test_manifest_hash:
        return refuse(
            f"not promoted (champion v{v} was not scored on this test set): test manifests differ "
            f"(challenger {challenger.test_manifest_hash}, champion v{v} {champion.test_manifest_hash or UNKNOWN}); "
            "re-score the champion on the challenger's test manifest (the pipeline's rescore-champion task, "
            "or `affectflow register ... --manifest <manifest.parquet> --features <store>`) or promote with --force")
    needed = champion.uar + min_uar_gain
    where = f"test manifest {_short(challenger.test_manifest_hash)}" + (", champion re-scored" if rescored else "")
    if challenger.uar + UAR_TOLERANCE < needed:
        return refuse(f"not promoted (no improvement over champion v{v}): UAR {challenger.uar:.4f} < champion "
                      f"v{v} UAR {champion.uar:.4f} + margin {min_uar_gain:.4f} = {needed:.4f} ({where})")
    return GateDecision(
        True,
        f"UAR {challenger.uar:.4f} >= champion v{v} UAR {champion.uar:.4f} + margin {min_uar_gain:.4f} ({where}); "
        f"every class recall >= {min_class_recall:.3f}",
        v, challenger.test_manifest_hash, challenger.uar, champion.uar, rescored)


# ----------------------------------------------------------------------------- evaluations bound to models
@dataclass(frozen=True)
class ModelIdentity:
    """Which model: the content hash of its folder and the MLflow run that logged it."""

    content_hash: str
    run_id: str | None = None

    def describe(self) -> str:
        return f"model {self.content_hash[:12]}" + (f" (MLflow run {self.run_id})" if self.run_id else "")

    def matches(self, other: ModelIdentity) -> bool:
        return self.content_hash == other.content_hash and (
            not self.run_id or not other.run_id or self.run_id == other.run_id)


def folder_identity(model_dir: str | Path) -> ModelIdentity:
    """The identity of a model folder on disk."""
    return ModelIdentity(content_hash(model_dir), _lookup(_read_model_json(model_dir), "mlflow_run_id", "run_id"))


def read_identity(metrics_path: str | Path) -> ModelIdentity | None:
    """The `model` block of an evaluation (None when absent: an evaluation from before it existed)."""
    path = Path(metrics_path)
    block = _read_metrics(path).get("model")
    if block is None:
        return None
    if not isinstance(block, Mapping) or not isinstance(block.get("content_hash"), str):
        raise ValueError(f"{path}: field 'model.content_hash' must be a string (the scored model's hash)")
    run = block.get("mlflow_run_id")
    return ModelIdentity(block["content_hash"], str(run) if run else None)


def check_evaluation(metrics_path: str | Path, model_dir: str | Path) -> ModelIdentity:
    """The model folder's identity, after checking that `metrics_path` is an evaluation of it."""
    actual = folder_identity(model_dir)
    scored = read_identity(metrics_path)
    redo = f"re-run `affectflow evaluate --model {model_dir}`"
    if scored is None:
        raise EvaluationMismatch(f"{metrics_path}: field 'model' missing: the evaluation does not say which "
                                 f"model it scored, so it cannot be used for {model_dir} ({actual.describe()}); {redo}")
    if not scored.matches(actual):
        raise EvaluationMismatch(f"{metrics_path} is an evaluation of {scored.describe()}, but {model_dir} is "
                                 f"{actual.describe()}: refusing to use one model's scores for another; {redo}")
    return actual


# ----------------------------------------------------------------------------- the re-score folder
@dataclass(frozen=True)
class RescorePlan:
    """What `affectflow.orchestration.rescore` decided and did (its plan.json)."""

    needed: bool
    reason: str
    champion_version: str | None = None
    champion_content_hash: str | None = None
    challenger_test_manifest_hash: str | None = None
    comparison_test_manifest_hash: str | None = None
    excluded_speakers: tuple[str, ...] = ()
    challenger_rescored: bool = False

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "excluded_speakers": list(self.excluded_speakers)}


def read_rescore_plan(folder: str | Path) -> RescorePlan | None:
    """plan.json of a re-score folder; None when the folder holds none (a placeholder)."""
    path = Path(folder) / RESCORE_PLAN
    if not path.is_file():
        return None
    data = _read_metrics(path)
    try:
        return RescorePlan(**{**data, "excluded_speakers": tuple(data.get("excluded_speakers", ()))})
    except TypeError as e:
        raise ValueError(f"{path}: not a re-score plan ({e})") from None


@dataclass(frozen=True)
class Comparison:
    """The one test set the gate compares challenger and champion on, after a re-score."""

    test_manifest_hash: str
    champion_version: str
    excluded_speakers: tuple[str, ...] = ()
    challenger_rescored: bool = False


# ----------------------------------------------------------------------------- MLflow plumbing
def client_for(params: Params):
    """An MlflowClient on params.tracking.uri for both tracking and registry (the store is created
    when it is a local sqlite file: registering writes)."""
    return client(ensure_store(params.tracking.uri))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_not_found(err: Exception) -> bool:
    code = getattr(err, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@dataclass(frozen=True)
class ModelSource:
    """The logged model a new version points at."""

    model_uri: str
    run_id: str | None
    model_id: str | None


def _read_model_json(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "model.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be an object")
    return data


def _lookup(info: Mapping[str, Any], *keys: str) -> str | None:
    """First non-empty value among top-level keys, then the `mlflow` and `lineage` objects."""
    scopes = [info] + [info[s] for s in ("mlflow", "lineage") if isinstance(info.get(s), Mapping)]
    for scope in scopes:
        for key in keys:
            value = scope.get(key)
            if value:
                return str(value)
    return None


def resolve_source(client: Any, model_dir: str | Path, *, run_id: str | None = None,
                   model_uri: str | None = None) -> ModelSource:
    """Find the logged model to register: explicit arguments first, else model.json's mlflow fields.

    `models:/<model_id>` is used as is; `runs:/<run_id>/<name>` and a bare run id are mapped to the
    run's logged model (the newest one when the run logged several).
    """
    info = _read_model_json(model_dir)
    model_uri = model_uri or _lookup(info, "mlflow_model_uri", "model_uri")
    run_id = run_id or _lookup(info, "mlflow_run_id", "run_id")
    if not model_uri and not run_id:
        raise ValueError(f"{Path(model_dir) / 'model.json'}: fields 'mlflow_model_uri' and "
                         "'mlflow_run_id' missing and no --run-id/--model-uri given: nothing to register "
                         "(train with MLflow tracking on)")
    from mlflow.store.artifact.utils.models import _parse_model_id_if_present

    if model_uri and model_uri.startswith("models:/"):
        model_id = _parse_model_id_if_present(model_uri)
        if model_id and run_id is None:
            run_id = client.get_logged_model(model_id).source_run_id
        return ModelSource(model_uri, run_id, model_id)
    name = None
    if model_uri and model_uri.startswith("runs:/"):
        rest = model_uri[len("runs:/"):].strip("/")
        run_id, _, name = rest.partition("/")
    if not run_id:
        raise ValueError(f"model URI {model_uri!r}: expected models:/<model_id> or runs:/<run_id>/<name>")
    run = client.get_run(run_id)
    query = f"source_run_id = '{run_id}'" + (f" AND name = '{name}'" if name else "")
    found = list(client.search_logged_models(experiment_ids=[run.info.experiment_id], filter_string=query))
    if not found:
        if model_uri:  # a pre-MLflow-3 run artifact; the registry resolves runs:/ itself
            return ModelSource(model_uri, run_id, None)
        raise RegistryError(f"run {run_id}: no logged model found (log it with mlflow.pyfunc.log_model)")
    newest = max(found, key=lambda m: m.creation_timestamp or 0)
    return ModelSource(f"models:/{newest.model_id}", run_id, newest.model_id)


def lineage(client: Any, source: ModelSource, model_dir: str | Path, scores: Scores) -> dict[str, str]:
    """Where the model came from, for version tags.

    Each field is taken from the training run's tags first (what `affectflow.tracking.runs` recorded when
    the model was trained), then model.json's `lineage`, and only then from the registering process
    (`AFFECTFLOW_GIT_COMMIT` / `git rev-parse HEAD`, `affectflow.tracking.revisions.dvc_revision()`), which may
    have moved on since training. Optional extras (`COPIED_LINEAGE`) are copied when present.
    """
    run_tags: dict[str, str] = {}
    if source.run_id:
        try:
            run_tags = dict(client.get_run(source.run_id).data.tags)
        except Exception as e:  # a deleted run must not block registration; lineage falls back
            if not _is_not_found(e):
                raise
    info = _read_model_json(model_dir)

    def pick(*keys: str) -> str | None:
        for key in keys:
            if run_tags.get(key):
                return run_tags[key]
        return _lookup(info, *keys)

    found = {
        "git_commit": pick("git_commit", "mlflow.source.git.commit") or git_commit()["git_commit"],
        "dvc_revision": pick("dvc_revision") or dvc_revision(),
        "manifest_hash": pick("manifest_hash"),
        TEST_HASH_TAG: scores.test_manifest_hash,
    }
    out = {k: v or UNKNOWN for k, v in found.items()}
    for key in COPIED_LINEAGE:
        value = pick(key)
        if value:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- the registry
@dataclass
class VersionInfo:
    """A version as `list` and `describe` show it."""

    version: str
    aliases: list[str]
    created: str
    run_id: str | None
    source: str | None
    tags: dict[str, str]

    def summary(self) -> dict[str, Any]:
        keys = (*METRIC_TAGS, "gate", "gate_reason", TEST_HASH_TAG, CONTENT_HASH_TAG, DATA_VERSION_TAG,
                *LINEAGE_TAGS)
        return {"version": self.version, "aliases": self.aliases, "created": self.created,
                "run_id": self.run_id, "source": self.source,
                **{k: self.tags[k] for k in keys if k in self.tags}}


@dataclass
class _State:
    """The promotion history as stored: events by seq, the stack top, and whether it still sits in
    the earlier one-tag layout (converted at the next write)."""

    events: dict[int, dict[str, Any]]
    top: int | None
    legacy: bool = False

    def chain(self, start: int | None = None) -> list[int]:
        """Event seqs from `start` (default: the top) down the `below` pointers."""
        out: list[int] = []
        seq = self.top if start is None else start
        while seq is not None and seq in self.events and seq not in out:
            out.append(seq)
            below = self.events[seq].get("below")
            seq = None if below is None else int(below)
        return out

    def top_version(self) -> str | None:
        return None if self.top is None or self.top not in self.events else str(self.events[self.top]["version"])


class Registry:
    """One registered model: aliases, scores in tags, gate, promotion history."""

    def __init__(self, params: Params, client: Any = None):
        self.params = params
        self.cfg = params.registry
        self.name = params.registry.model_name
        self.client = client or client_for(params)

    # -------------------------------------------------------------- reading
    def _registered(self) -> Any:
        """The RegisteredModel (aliases and tags in one round trip), None when not registered yet."""
        try:
            return self.client.get_registered_model(self.name)
        except Exception as e:
            if _is_not_found(e):
                return None
            raise

    def exists(self) -> bool:
        return self._registered() is not None

    def aliases(self) -> dict[str, str]:
        """alias -> version (as strings); empty when the model is not registered yet."""
        rm = self._registered()
        return {} if rm is None else {a: str(v) for a, v in rm.aliases.items()}

    def model_tags(self) -> dict[str, str]:
        rm = self._registered()
        return {} if rm is None else dict(rm.tags)

    def alias_version(self, alias: str) -> str | None:
        return self.aliases().get(alias)

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.get(version).tags)

    def get(self, version: str):
        try:
            return self.client.get_model_version(self.name, str(version))
        except Exception as e:
            if _is_not_found(e):
                raise RegistryError(f"model {self.name!r}: version {version} not found") from None
            raise

    def _search(self, extra: str = "") -> list[Any]:
        quoted = self.name.replace("'", "\\'")
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name = '{quoted}'{extra}", page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    def versions(self) -> list[VersionInfo]:
        """All versions, newest first, with aliases filled in (search results lack them)."""
        if not self.exists():
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(version, []).append(alias)
        out = [self._info(mv, sorted(by_version.get(str(mv.version), []))) for mv in self._search()]
        return sorted(out, key=lambda v: int(v.version), reverse=True)

    def find_by_content(self, digest: str) -> str | None:
        """The version already registered for this model folder content (oldest if several)."""
        if not self.exists():
            return None
        found = [str(mv.version) for mv in self._search(f" AND tags.{CONTENT_HASH_TAG} = '{digest}'")]
        return min(found, key=int) if found else None

    def describe(self, version: str) -> VersionInfo:
        mv = self.get(version)
        aliases = sorted(a for a, v in self.aliases().items() if v == str(mv.version))
        return self._info(mv, aliases)

    @staticmethod
    def _info(mv: Any, aliases: list[str]) -> VersionInfo:
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
        return VersionInfo(str(mv.version), aliases, created.isoformat(timespec="seconds"),
                           mv.run_id, mv.source, dict(mv.tags))

    def scores(self, version: str) -> Scores:
        """The version's scores on its own test manifest."""
        return Scores.from_tags(self.version_tags(version), f"model {self.name!r} v{version}")

    def scores_on(self, version: str, test_hash: str, tags: Mapping[str, str] | None = None) -> Scores | None:
        """The version's scores on test manifest `test_hash`: its own evaluation or a recorded re-score."""
        tags = self.version_tags(version) if tags is None else tags
        where = f"model {self.name!r} v{version}"
        if tags.get(TEST_HASH_TAG) == test_hash:
            return Scores.from_tags(tags, where)
        record = tags.get(SCORE_ON_PREFIX + test_hash)
        return None if record is None else Scores.from_record(record, test_hash, f"{where} tag {SCORE_ON_PREFIX}{test_hash}")

    @staticmethod
    def _scored_sets(tags: Mapping[str, str]) -> list[str]:
        """Test manifests a version has scores on: its own first, then re-scores (newest first)."""
        own = [tags[TEST_HASH_TAG]] if tags.get(TEST_HASH_TAG, UNKNOWN) != UNKNOWN else []
        others = []
        for key, value in tags.items():
            if key.startswith(SCORE_ON_PREFIX):
                try:
                    at = str(json.loads(value).get("at", ""))
                except (ValueError, AttributeError):
                    at = ""
                others.append((at, key[len(SCORE_ON_PREFIX):]))
        return own + [h for _, h in sorted(others, reverse=True) if h not in own]

    def content_of(self, version: str) -> str | None:
        return self.version_tags(version).get(CONTENT_HASH_TAG)

    # -------------------------------------------------------------- history
    def _state(self, tags: Mapping[str, str] | None = None) -> _State:
        tags = self.model_tags() if tags is None else tags
        events: dict[int, dict[str, Any]] = {}
        for key, value in tags.items():
            if key.startswith(EVENT_PREFIX):
                try:
                    events[int(key[len(EVENT_PREFIX):])] = json.loads(value)
                except ValueError as e:
                    raise RegistryError(f"model {self.name!r}: tag {key!r} is not an event ({e})") from None
        top = tags.get(STACK_TOP_TAG)
        if events or top is not None:
            return _State(events, int(top) if top else None)
        if LEGACY_HISTORY_TAG in tags or LEGACY_STACK_TAG in tags:
            return self._from_legacy(tags)
        return _State({}, None)

    def _from_legacy(self, tags: Mapping[str, str]) -> _State:
        """The earlier layout as events: the history list (off the stack), then one `adopt` event per
        champion of the stack, each below the next."""
        def load(key: str) -> list[Any]:
            try:
                value = json.loads(tags.get(key) or "[]")
            except json.JSONDecodeError as e:
                raise RegistryError(f"model {self.name!r}: tag {key!r} is not JSON ({e})") from None
            if not isinstance(value, list):
                raise RegistryError(f"model {self.name!r}: tag {key!r} must be a JSON list")
            return value

        events: dict[int, dict[str, Any]] = {}
        for e in load(LEGACY_HISTORY_TAG):
            if isinstance(e, Mapping):
                seq = len(events) + 1
                events[seq] = {**{k: e[k] for k in ("action", "version", "previous", "forced", "at") if k in e},
                               "reason": _cut(str(e.get("reason", "")), REASON_CHARS), "seq": seq, "below": None}
        top = None
        for version in load(LEGACY_STACK_TAG):
            seq = len(events) + 1
            events[seq] = {"seq": seq, "action": "adopt", "version": str(version), "below": top,
                           "reason": f"converted from tag {LEGACY_STACK_TAG!r}", "at": utc_now()}
            top = seq
        return _State(events, top, legacy=True)

    def history(self) -> list[dict[str, Any]]:
        """Every promotion / rollback event, oldest first."""
        state = self._state()
        return [state.events[s] for s in sorted(state.events)]

    def stack(self) -> list[str]:
        """Champions `rollback` walks back through, oldest first (the last is the champion)."""
        state = self._state()
        return [str(state.events[s]["version"]) for s in reversed(state.chain())]

    # -------------------------------------------------------------- writing
    def _set_version_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, str(version), key, _cut(str(value)))

    def _set_model_tag(self, key: str, value: str) -> None:
        self.client.set_registered_model_tag(self.name, key, _cut(str(value)))

    def ensure_model(self) -> None:
        if self.exists():
            return
        try:
            self.client.create_registered_model(
                self.name, description="affectflow speech emotion recognizer; aliases champion/challenger")
        except Exception as e:  # created meanwhile by another process
            if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise

    def create_version(self, source: ModelSource, tags: Mapping[str, str]) -> str:
        # MLflow's sqlalchemy registry store looks `models:/<model_id>` sources up with a default
        # MlflowClient(), i.e. the process-wide tracking URI: point that at ours for this call.
        self.ensure_model()
        with mlflow_scope(self.client.tracking_uri):
            mv = self.client.create_model_version(self.name, source.model_uri, run_id=source.run_id,
                                                  tags={k: _cut(str(v)) for k, v in tags.items()},
                                                  model_id=source.model_id)
        version = str(mv.version)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return version

    def record_scores(self, version: str, scores: Scores, **extra: Any) -> None:
        """Keep `version`'s scores on another test set (`score_on.<hash>`)."""
        if not scores.test_manifest_hash:
            raise RegistryError(f"model {self.name!r} v{version}: a re-score without test_manifest_hash")
        self._set_version_tag(version, SCORE_ON_PREFIX + scores.test_manifest_hash,
                              scores.to_record(at=utc_now(), **extra))

    def apply_rescore(self, folder: str | Path, version: str, identity: ModelIdentity,
                      scores: Scores) -> Comparison | None:
        """Record the champion's re-score (and the challenger's, on a reduced set) from a re-score
        folder, after checking that each evaluation is of the model it is recorded for; the set the
        gate should compare on, or None when the folder holds no re-score for the current champion."""
        plan = read_rescore_plan(folder)
        if plan is None or not plan.needed or not plan.champion_version:
            return None
        champion = self.alias_version(CHAMPION)
        if champion != plan.champion_version:
            return None  # champion moved since the re-score: its scores are about another version
        root = Path(folder)
        champ_metrics = root / RESCORE_CHAMPION / "metrics.json"
        scored = read_identity(champ_metrics)
        tags = self.version_tags(champion)
        registered = ModelIdentity(tags.get(CONTENT_HASH_TAG) or plan.champion_content_hash or "",
                                   self.get(champion).run_id)
        if scored is None or not registered.content_hash or not scored.matches(registered):
            got = scored.describe() if scored else "no model identity"
            raise EvaluationMismatch(f"{champ_metrics} is an evaluation of {got}, but champion v{champion} is "
                                     f"{registered.describe()}: the gate refuses to compare with another model's "
                                     "scores; re-run the re-score")
        if CONTENT_HASH_TAG not in tags:  # registered before content hashes: the re-score verified it
            self._set_version_tag(champion, CONTENT_HASH_TAG, registered.content_hash)
        champ_scores = read_scores(champ_metrics)
        target = champ_scores.test_manifest_hash
        if plan.challenger_rescored:
            chal_metrics = root / RESCORE_CHALLENGER / "metrics.json"
            chal_id = read_identity(chal_metrics)
            if chal_id is None or not chal_id.matches(identity):
                got = chal_id.describe() if chal_id else "no model identity"
                raise EvaluationMismatch(f"{chal_metrics} is an evaluation of {got}, but the challenger "
                                         f"v{version} is {identity.describe()}; re-run the re-score")
            chal_scores = read_scores(chal_metrics)
            if chal_scores.test_manifest_hash != target:
                raise RegistryError(f"{root}: champion and challenger re-scores are on different test sets "
                                    f"({target}, {chal_scores.test_manifest_hash})")
            if chal_scores.test_manifest_hash != scores.test_manifest_hash:
                self.record_scores(version, chal_scores, reduced_from=scores.test_manifest_hash)
        elif target != scores.test_manifest_hash:
            raise RegistryError(f"{champ_metrics}: champion re-scored on test manifest {target}, but the "
                                f"challenger was scored on {scores.test_manifest_hash}")
        assert target is not None
        self.record_scores(champion, champ_scores, rescored_for=f"v{version}",
                           excluded_speakers=len(plan.excluded_speakers))
        return Comparison(target, champion, plan.excluded_speakers, plan.challenger_rescored)

    def gate(self, version: str, champion: str | None = None, *, on: str | None = None,
             rescored: bool = False) -> GateDecision:
        """Compare `version` with the champion on one test set and record the decision on the version.

        The set is `on`, else the first one both have scores on (the challenger's own test manifest
        first, then its re-scores). Unreadable scores (a version registered outside affectflow) fail
        the gate with the reason instead of raising, so `--force` remains a way out.
        """
        champion = champion or self.alias_version(CHAMPION)
        where = f"model {self.name!r} v{version}"
        try:
            tags = self.version_tags(version)
            own = Scores.from_tags(tags, where)
            champ_tags = self.version_tags(champion) if champion else {}
            if on is None and champion:
                on = next((h for h in self._scored_sets(tags) if self.scores_on(champion, h, champ_tags)), None)
                rescored = rescored or bool(on and champ_tags.get(TEST_HASH_TAG) != on)
            challenger = (self.scores_on(version, on, tags) if on else None) or own
            champ = None
            if champion:
                champ = (self.scores_on(champion, challenger.test_manifest_hash, champ_tags)
                         if challenger.test_manifest_hash else None) or Scores.from_tags(champ_tags, f"v{champion}")
            decision = evaluate_gate(challenger, champ, min_uar_gain=self.cfg.min_uar_gain,
                                     min_class_recall=self.cfg.min_class_recall, champion_version=champion,
                                     rescored=rescored)
        except RegistryError as e:
            decision = GateDecision(False, f"not promoted ({e})", champion)
        out = {"gate": "passed" if decision.passed else "failed", "gate_reason": decision.reason,
               "gate_champion": decision.champion_version or "none",
               "gate_test_manifest_hash": decision.test_manifest_hash or UNKNOWN}
        for key, value in (("gate_uar", decision.challenger_uar), ("gate_champion_uar", decision.champion_uar)):
            if value is not None:
                out[key] = _fmt(value)
        for key, value in out.items():
            self._set_version_tag(version, key, value)
        return decision

    def _write_event(self, state: _State, event: dict[str, Any], new_top: int | None) -> dict[str, Any]:
        """Store one event (its own tag), move the stack top, trim old events off the stack."""
        if state.legacy:  # first write since the one-tag layout: store it as events, drop the old tags
            for seq, old in state.events.items():
                self._set_model_tag(f"{EVENT_PREFIX}{seq:06d}", _compact(old))
        seq = max(state.events, default=0) + 1
        event = {**event, "seq": seq, "reason": _cut(str(event.get("reason", "")), REASON_CHARS)}
        if new_top is None:
            new_top = seq
        text = _compact(event)
        if len(text) > MAX_EVENT_CHARS:
            raise RegistryError(f"model {self.name!r}: event of {len(text)} characters (limit {MAX_EVENT_CHARS})")
        self._set_model_tag(f"{EVENT_PREFIX}{seq:06d}", text)
        self._set_model_tag(STACK_TOP_TAG, str(new_top))
        state.events[seq] = event
        state.top = new_top
        if state.legacy:
            for key in (LEGACY_HISTORY_TAG, LEGACY_STACK_TAG):
                self.client.delete_registered_model_tag(self.name, key)
            state.legacy = False
        self._trim(state)
        return event

    def _trim(self, state: _State) -> None:
        """Keep the newest `registry.history_limit` events, and every event the rollback stack needs."""
        keep = set(state.chain())
        extra = len(state.events) - self.cfg.history_limit
        for seq in sorted(state.events):
            if extra <= 0:
                break
            if seq not in keep:
                self.client.delete_registered_model_tag(self.name, f"{EVENT_PREFIX}{seq:06d}")
                del state.events[seq]
                extra -= 1

    def _set_champion(self, version: str, *, previous: str | None, action: str, reason: str, forced: bool,
                      state: _State, below: int | None, new_top: int | None = None) -> dict[str, Any]:
        """Move the alias, then write the event on the version(s) and the registered model."""
        at = utc_now()
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        if action == "promote":
            version_tags = {"promoted_at": at, "promotion_reason": reason, "promotion_forced": str(forced).lower()}
        else:
            version_tags = {"restored_at": at, "restore_reason": reason}
            if previous:
                self._set_version_tag(previous, "rolled_back_at", at)
                self._set_version_tag(previous, "rollback_reason", reason)
        for key, value in version_tags.items():
            self._set_version_tag(version, key, value)
        event = {"action": action, "version": version, "previous": previous, "reason": reason, "forced": forced,
                 "at": at, "below": below}
        return self._write_event(state, event, new_top)

    def promote(self, version: str, *, force: bool = False, reason: str = "", on: str | None = None,
                rescored: bool = False) -> dict[str, Any]:
        """Gate `version` against the champion and move `champion` if it passes (or if forced)."""
        version = str(self.get(version).version)
        current = self.alias_version(CHAMPION)
        if current == version:
            raise RegistryError(f"model {self.name!r}: v{version} is already the champion")
        decision = self.gate(version, current, on=on, rescored=rescored)
        promoted = decision.passed or force
        out: dict[str, Any] = {"model_name": self.name, "version": version,
                               "gate": asdict(decision), "promoted": promoted, "forced": False,
                               "previous_champion": current}
        if promoted:
            forced = not decision.passed
            why = (f"forced ({reason or 'no reason given'}); gate said: {decision.reason}" if forced
                   else f"{reason + '; ' if reason else ''}gate passed: {decision.reason}")
            state = self._state()
            if current and state.top_version() != current:  # alias set outside affectflow: keep it reachable
                self._write_event(state, {"action": "adopt", "version": current, "previous": None, "forced": False,
                                          "reason": "champion alias set outside affectflow", "at": utc_now(),
                                          "below": state.top}, None)
            out["event"] = self._set_champion(version, previous=current, action="promote", reason=why,
                                              forced=forced, state=state, below=state.top)
            out["forced"] = forced
        aliases = self.aliases()
        out["champion"] = aliases.get(CHAMPION)
        out["aliases"] = sorted(a for a, v in aliases.items() if v == version)
        return out

    def rollback(self, *, reason: str = "") -> dict[str, Any]:
        """Move `champion` back to the version that held it before the current one."""
        current = self.alias_version(CHAMPION)
        if current is None:
            raise RegistryError(f"model {self.name!r}: no champion to roll back")
        state = self._state()
        top = state.top
        if top is not None and state.top_version() == current:
            below = state.events[top].get("below")
            target_seq = None if below is None else int(below)
        else:
            target_seq = top  # alias moved outside affectflow: back to the last champion affectflow set
        if target_seq is None or target_seq not in state.events:
            raise RegistryError(f"model {self.name!r}: champion v{current} has no predecessor in the promotion "
                                "history; nothing to roll back to")
        target = str(state.events[target_seq]["version"])
        self.get(target)  # a deleted version is an error that names it
        why = reason or "manual rollback"
        event = self._set_champion(target, previous=current, action="rollback", reason=why, forced=False,
                                   state=state, below=None, new_top=target_seq)
        return {"model_name": self.name, "champion": target, "previous_champion": current, "event": event}


# ----------------------------------------------------------------------------- stage entry points
def register(params: Params, model_dir: str | Path, metrics_path: str | Path, out_dir: str | Path, *,
             run_id: str | None = None, model_uri: str | None = None, rescore: str | Path | None = None,
             data_version: str | None = None, client: Any = None) -> dict[str, Any]:
    """Register the trained model as a new `challenger` version; gate it; promote if it passes.

    `metrics_path` must be an evaluation of `model_dir` (its `model` block), else EvaluationMismatch.
    A model already registered (same content hash) gets no second version: the existing one is
    gated again. `rescore`: a folder written by `affectflow.orchestration.rescore` (the champion
    scored on this model's test manifest); its scores are recorded on the versions and the gate
    compares on that set. Writes `out_dir/model_card.md` (`tracking.model_card`, also logged with the
    model and set as the version description) and `out_dir/result.json` (version, aliases, gate decision and reason,
    the comparison, champion before and after). A failed gate is a normal outcome, not an error.
    """
    reg = Registry(params, client)
    scores = read_scores(metrics_path)
    identity = check_evaluation(metrics_path, model_dir)
    source = resolve_source(reg.client, model_dir, run_id=run_id, model_uri=model_uri)
    if identity.run_id and source.run_id and identity.run_id != source.run_id:
        raise EvaluationMismatch(f"{model_dir} was logged by MLflow run {identity.run_id}, but the model to "
                                 f"register ({source.model_uri}) belongs to run {source.run_id}")
    lin = lineage(reg.client, source, model_dir, scores)
    at = utc_now()
    previous = reg.alias_version(CHAMPION)
    existing = reg.find_by_content(identity.content_hash)
    note = None
    if existing is None:
        tags = {**lin, **scores.to_tags(), CONTENT_HASH_TAG: identity.content_hash, "registered_at": at,
                "model_dir": str(Path(model_dir).resolve()), "metrics_path": str(Path(metrics_path).resolve())}
        if data_version:
            tags[DATA_VERSION_TAG] = data_version
        version = reg.create_version(source, tags)
    else:
        version = existing
        note = f"already registered as v{version} (same model content {identity.content_hash[:12]}); no new version"
    plan = read_rescore_plan(rescore) if rescore is not None else None
    comparison = reg.apply_rescore(rescore, version, identity, scores) if rescore is not None else None
    on = comparison.test_manifest_hash if comparison else None
    promoted = False
    guard = _guard(params, metrics_path, rescore, reg, previous, comparison is not None, scores)
    if existing is not None and existing == previous:
        decision: dict[str, Any] = asdict(GateDecision(False, f"{note}: v{version} is the champion", previous))
    elif guard is not None and not guard.passed:  # registry.guard_corpora: refused before any promotion
        decision = asdict(GateDecision(False, guard.reason, previous, scores.test_manifest_hash, scores.uar))
    elif params.registry.auto_promote:
        promo = reg.promote(version, reason="at registration", on=on, rescored=comparison is not None)
        decision, promoted = promo["gate"], promo["promoted"]
    else:
        decision = asdict(reg.gate(version, on=on, rescored=comparison is not None))
    if existing is not None and existing != previous:
        reg.client.set_registered_model_alias(reg.name, CHALLENGER, version)
    aliases = reg.aliases()
    result = {
        "model_name": reg.name, "version": version, "model_uri": f"models:/{reg.name}/{version}",
        "already_registered": existing is not None, "note": note,
        "source": source.model_uri, "run_id": source.run_id, "model_id": source.model_id,
        "model_content_hash": identity.content_hash, "data_version": data_version,
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "champion": aliases.get(CHAMPION), "previous_champion": previous,
        "gate": decision, "promoted": promoted, "registered_at": at,
        "comparison": None if comparison is None else {
            **asdict(comparison), "excluded_speakers": list(comparison.excluded_speakers)},
        "rescore": plan.to_json() if plan is not None else None,
        "metrics": {k: v for k, v in asdict(scores).items() if v is not None}, "lineage": lin,
        "tracking_uri": resolve_uri(params.tracking.uri),
        "guard": None if guard is None else guard.to_json(),
    }
    if guard is not None:
        atomic_write_text(Path(out_dir) / "guard.md", guard.markdown())
    # imported here: the model card reads the corpora tables, which registry reads do not need
    from affectflow.tracking.model_card import publish_card

    card, why = publish_card(reg.client, reg.name, version, model_dir, metrics_path, out_dir, source.run_id, decision)
    result |= {"model_card": None if card is None else str(card), "model_card_missing": why}
    atomic_write_json(Path(out_dir) / "result.json", result)
    return result


def _guard(params: Params, metrics_path: str | Path, rescore: str | Path | None, reg: Registry,
           champion: str | None, rescored: bool, scores: Scores) -> Any:
    """The generalization guard (`tracking.guard`; None when registry.guard_corpora is empty)."""
    from affectflow.tracking.guard import check

    tags = reg.version_tags(champion) if champion else None
    same = bool(tags) and tags.get(TEST_HASH_TAG) == scores.test_manifest_hash
    return check(params.registry, metrics_path, rescore, tags, rescored, same)


def promote(params: Params, version: str, *, force: bool = False, reason: str = "",
            client: Any = None) -> dict[str, Any]:
    return Registry(params, client).promote(version, force=force, reason=reason)


def rollback(params: Params, *, reason: str = "", client: Any = None) -> dict[str, Any]:
    return Registry(params, client).rollback(reason=reason)
