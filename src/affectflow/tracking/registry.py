"""MLflow model registry with a promotion gate: aliases `challenger` and `champion`, never stages.

Every trained model becomes a new version of `registry.model_name` with alias `challenger` and tags
that say where it came from (git commit, DVC revision, manifest hashes) and how good it is (UAR, WA,
macro-F1, per-class recall). The gate moves `champion` only when the challenger was scored on the
same test manifest as the champion, its UAR beats the champion's by `registry.min_uar_gain`, and no
class recall is below `registry.min_class_recall`. Promotions and rollbacks are written as tags on
the version and on the registered model (`champion_history`, `champion_stack`), so the registry
itself is the audit log and `rollback` can always find the previous champion.

What is read from `metrics.json` (written by evaluate): `uar` (required), `wa`, `macro_f1`,
`per_class_recall` ({class: recall}; required when the recall floor is above 0) and
`test_manifest_hash` (required for any promotion). `per_class_recall` and `test_manifest_hash`
may also sit in the `test` object (where `affectflow.stages.evaluate` keeps the test-split details); a
recall of null (a class absent from the test split) is left out. A metric may be a number or an
object with a `value` / `mean` / `point` field (point estimate with confidence interval); other
keys are ignored.
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
from affectflow.storage import atomic_write_json
from affectflow.tracking.revisions import dvc_revision, git_commit
from affectflow.tracking.uri import client, ensure_store, mlflow_scope, resolve_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
UNKNOWN = "unknown"

# Registered-model tags.
HISTORY_TAG = "champion_history"
"""JSON list of promotion / rollback events, oldest first (trimmed to registry.history_limit)."""
STACK_TAG = "champion_stack"
"""JSON list of champion versions, oldest first; promotion pushes, rollback pops."""
LAST_PROMOTION_TAG = "last_promotion"
LAST_ROLLBACK_TAG = "last_rollback"

# Model-version tags written at registration.
METRIC_TAGS = ("uar", "wa", "macro_f1")
RECALL_TAG = "per_class_recall"
TEST_HASH_TAG = "test_manifest_hash"
LINEAGE_TAGS = ("git_commit", "dvc_revision", "manifest_hash")
COPIED_LINEAGE = ("git_dirty", "feature_config_hash", "params_hash", "dvc_manifest_md5", "dvc_features_md5")
"""Lineage that `affectflow.tracking.lineage` puts on training runs; copied to the version when present."""

UAR_TOLERANCE = 1e-9
"""Float slack when comparing UAR with champion UAR + margin, so an exact-margin gain passes."""


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed (no champion, nothing to roll back, no logged model)."""


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


def _fmt(x: float) -> str:
    return f"{x:.6f}"


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


def read_scores(metrics_path: str | Path) -> Scores:
    """Scores from evaluate's metrics.json; errors name the file and the field."""
    path = Path(metrics_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: metrics file not found (run `affectflow evaluate`)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: top level must be an object")
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
                  min_class_recall: float, champion_version: str | None = None) -> GateDecision:
    """The promotion rule, free of MLflow so it can be reasoned about and tested on its own."""
    if not challenger.test_manifest_hash:
        return GateDecision(False, "challenger has no test_manifest_hash: cannot tell which test set "
                                   "it was scored on", champion_version)
    if min_class_recall > 0 and not challenger.per_class_recall:
        return GateDecision(False, f"challenger has no per_class_recall, so the recall floor "
                                   f"{min_class_recall:.3f} cannot be checked", champion_version)
    low = {c: r for c, r in sorted(challenger.per_class_recall.items()) if r < min_class_recall}
    if low:
        listed = ", ".join(f"{c}={r:.3f}" for c, r in low.items())
        return GateDecision(False, f"class recall below floor {min_class_recall:.3f}: {listed}",
                            champion_version)
    if champion is None:
        return GateDecision(True, f"no champion yet; UAR {challenger.uar:.4f} and every class recall "
                                  f">= {min_class_recall:.3f}", None)
    if champion.test_manifest_hash != challenger.test_manifest_hash:
        return GateDecision(
            False,
            f"test manifests differ (challenger {challenger.test_manifest_hash}, champion "
            f"v{champion_version} {champion.test_manifest_hash or UNKNOWN}): scores are not comparable; "
            "re-evaluate both on one test manifest or promote with --force",
            champion_version)
    needed = champion.uar + min_uar_gain
    if challenger.uar + UAR_TOLERANCE < needed:
        return GateDecision(
            False,
            f"UAR {challenger.uar:.4f} < champion v{champion_version} UAR {champion.uar:.4f} + margin "
            f"{min_uar_gain:.4f} = {needed:.4f}",
            champion_version)
    return GateDecision(
        True,
        f"UAR {challenger.uar:.4f} >= champion v{champion_version} UAR {champion.uar:.4f} + margin "
        f"{min_uar_gain:.4f}; every class recall >= {min_class_recall:.3f}",
        champion_version)


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
        keys = (*METRIC_TAGS, "gate", "gate_reason", TEST_HASH_TAG, *LINEAGE_TAGS)
        return {"version": self.version, "aliases": self.aliases, "created": self.created,
                "run_id": self.run_id, "source": self.source,
                **{k: self.tags[k] for k in keys if k in self.tags}}


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

    def versions(self) -> list[VersionInfo]:
        """All versions, newest first, with aliases filled in (search results lack them)."""
        if not self.exists():
            return []
        by_version: dict[str, list[str]] = {}
        for alias, version in self.aliases().items():
            by_version.setdefault(version, []).append(alias)
        quoted = self.name.replace("'", "\\'")
        out: list[VersionInfo] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name = '{quoted}'", page_token=token)
            for mv in page:
                out.append(self._info(mv, sorted(by_version.get(str(mv.version), []))))
            token = page.token
            if not token:
                break
        return sorted(out, key=lambda v: int(v.version), reverse=True)

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
        return Scores.from_tags(self.version_tags(version), f"model {self.name!r} v{version}")

    def _json_tag(self, key: str) -> list[Any]:
        raw = self.model_tags().get(key)
        if not raw:
            return []
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RegistryError(f"model {self.name!r}: tag {key!r} is not JSON ({e})") from None
        if not isinstance(value, list):
            raise RegistryError(f"model {self.name!r}: tag {key!r} must be a JSON list")
        return value

    def history(self) -> list[dict[str, Any]]:
        return self._json_tag(HISTORY_TAG)

    def stack(self) -> list[str]:
        return [str(v) for v in self._json_tag(STACK_TAG)]

    # -------------------------------------------------------------- writing
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
                                                  tags=dict(tags), model_id=source.model_id)
        version = str(mv.version)
        self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return version

    def gate(self, version: str, champion: str | None = None) -> GateDecision:
        """Compare `version` with the champion (looked up unless given); record the decision on the version.

        Unreadable scores (a version registered outside affectflow) fail the gate with the reason
        instead of raising, so `--force` remains a way out.
        """
        champion = champion or self.alias_version(CHAMPION)
        try:
            decision = evaluate_gate(
                self.scores(version), self.scores(champion) if champion else None,
                min_uar_gain=self.cfg.min_uar_gain, min_class_recall=self.cfg.min_class_recall,
                champion_version=champion)
        except RegistryError as e:
            decision = GateDecision(False, str(e), champion)
        tags = {"gate": "passed" if decision.passed else "failed", "gate_reason": decision.reason,
                "gate_champion": decision.champion_version or "none", "gate_at": utc_now()}
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)
        return decision

    def _record(self, event: dict[str, Any], stack: list[str], model_tag: str) -> None:
        history = [*self.history(), event][-self.cfg.history_limit:]
        for key, value in ((HISTORY_TAG, history), (STACK_TAG, stack), (model_tag, event)):
            self.client.set_registered_model_tag(self.name, key, json.dumps(value, sort_keys=True))

    def _set_champion(self, version: str, *, previous: str | None, action: str, reason: str, forced: bool,
                      stack: list[str]) -> dict[str, Any]:
        """Move the alias, then write the event on the version(s) and the registered model."""
        at = utc_now()
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        event = {"action": action, "version": version, "previous": previous, "reason": reason,
                 "forced": forced, "at": at}
        if action == "promote":
            version_tags = {"promoted_at": at, "promotion_reason": reason, "promotion_forced": str(forced).lower()}
        else:
            version_tags = {"restored_at": at, "restore_reason": reason}
            if previous:
                self.client.set_model_version_tag(self.name, previous, "rolled_back_at", at)
                self.client.set_model_version_tag(self.name, previous, "rollback_reason", reason)
        for key, value in version_tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)
        self._record(event, stack, LAST_PROMOTION_TAG if action == "promote" else LAST_ROLLBACK_TAG)
        return event

    def promote(self, version: str, *, force: bool = False, reason: str = "") -> dict[str, Any]:
        """Gate `version` against the champion and move `champion` if it passes (or if forced)."""
        version = str(self.get(version).version)
        current = self.alias_version(CHAMPION)
        if current == version:
            raise RegistryError(f"model {self.name!r}: v{version} is already the champion")
        decision = self.gate(version, current)
        promoted = decision.passed or force
        out: dict[str, Any] = {"model_name": self.name, "version": version,
                               "gate": asdict(decision), "promoted": promoted, "forced": False,
                               "previous_champion": current}
        if promoted:
            forced = not decision.passed
            why = (f"forced ({reason or 'no reason given'}); gate said: {decision.reason}" if forced
                   else f"{reason + '; ' if reason else ''}gate passed: {decision.reason}")
            stack = self.stack()
            if current and (not stack or stack[-1] != current):
                stack.append(current)  # alias was set outside affectflow: keep it reachable
            stack.append(version)
            out["event"] = self._set_champion(version, previous=current, action="promote", reason=why,
                                              forced=forced, stack=stack)
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
        stack = self.stack()
        if stack and stack[-1] == current:
            stack.pop()
        if not stack:
            raise RegistryError(f"model {self.name!r}: champion v{current} has no predecessor in tag "
                                f"{STACK_TAG!r}; nothing to roll back to")
        target = stack[-1]
        self.get(target)  # a deleted version is an error that names it
        why = reason or "manual rollback"
        event = self._set_champion(target, previous=current, action="rollback", reason=why, forced=False,
                                   stack=stack)
        return {"model_name": self.name, "champion": target, "previous_champion": current,
                "event": event}


# ----------------------------------------------------------------------------- stage entry points
def register(params: Params, model_dir: str | Path, metrics_path: str | Path, out_dir: str | Path, *,
             run_id: str | None = None, model_uri: str | None = None, client: Any = None) -> dict[str, Any]:
    """Register the trained model as a new `challenger` version; gate it; promote if it passes.

    Writes `out_dir/result.json` (version, aliases, gate decision and reason, champion before and
    after). A failed gate is a normal outcome (the version stays registered as challenger), not an
    error: the pipeline branches on `gate.passed` / `promoted`.
    """
    reg = Registry(params, client)
    scores = read_scores(metrics_path)
    source = resolve_source(reg.client, model_dir, run_id=run_id, model_uri=model_uri)
    lin = lineage(reg.client, source, model_dir, scores)
    at = utc_now()
    tags = {**lin, **scores.to_tags(), "registered_at": at, "model_dir": str(Path(model_dir).resolve()),
            "metrics_path": str(Path(metrics_path).resolve())}
    version = reg.create_version(source, tags)
    previous = reg.alias_version(CHAMPION)
    if params.registry.auto_promote:
        promo = reg.promote(version, reason="at registration")
        decision, promoted = promo["gate"], promo["promoted"]
    else:
        decision, promoted = asdict(reg.gate(version)), False
    aliases = reg.aliases()
    result = {
        "model_name": reg.name, "version": version, "model_uri": f"models:/{reg.name}/{version}",
        "source": source.model_uri, "run_id": source.run_id, "model_id": source.model_id,
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "champion": aliases.get(CHAMPION), "previous_champion": previous,
        "gate": decision, "promoted": promoted, "registered_at": at,
        "metrics": {k: v for k, v in asdict(scores).items() if v is not None}, "lineage": lin,
        "tracking_uri": resolve_uri(params.tracking.uri),
    }
    atomic_write_json(Path(out_dir) / "result.json", result)
    return result


def promote(params: Params, version: str, *, force: bool = False, reason: str = "",
            client: Any = None) -> dict[str, Any]:
    return Registry(params, client).promote(version, force=force, reason=reason)


def rollback(params: Params, *, reason: str = "", client: Any = None) -> dict[str, Any]:
    return Registry(params, client).rollback(reason=reason)
