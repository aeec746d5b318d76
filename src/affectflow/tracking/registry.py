"""The MLflow model registry: versions, aliases `challenger` and `champion` (never stages), the
scores and lineage recorded as version tags, and the promotion history as events.

Every registered model is a version of `registry.model_name` with tags that say what it is
(`model_content_hash`: the model folder's content hash), where it came from (git commit, DVC
revision, data version, manifest hashes) and how good it is (UAR, WA, macro-F1, per-class recall on
its test manifest). Scores on other test sets (a champion re-scored on a grown corpus) are kept as
`score_on.<test manifest hash>` tags, so a champion is re-scored once per test set. `gate` reads
both versions' scores on one set and records the pure gate's decision (`affectflow.tracking.gate`);
`promote` moves `champion` when it passes (or when forced); `rollback` walks the history back.

History fits every MLflow backend (registered-model tag values are VARCHAR(5000) on Postgres and
MySQL): each promotion / rollback is its own registered-model tag `event.<seq>` of a few hundred
characters, and `champion_stack_top` names the event whose version holds `champion`; each event
points at the one below it, so `rollback` walks back one event at a time. The registry itself is
the audit log. Tags written before this layout (`champion_history`, `champion_stack`: one JSON list
each) are read and converted at the next promotion or rollback.

The model folder is read only through its contract (`read_model_meta`): `mlflow.run_id` (and an
optional `mlflow.model_uri`) find the logged model; `lineage` fills what the training run's tags lack.
Registering a model (the composition: evaluation checks, re-scores, model card, the typed result)
is the register stage's (`affectflow.stages.register`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from affectflow.config import Params
from affectflow.contracts.model_folder import read_model_meta
from affectflow.tracking import dimensions as dimension_tags
from affectflow.tracking.gate import (
    TEST_HASH_TAG,
    UNKNOWN,
    GateCheck,
    GateDecision,
    Scores,
    ScoresError,
    evaluate_gate,
)
from affectflow.tracking.revisions import dvc_revision, git_commit
from affectflow.tracking.uri import client, ensure_store, mlflow_scope

CHAMPION = "champion"
CHALLENGER = "challenger"

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


class RegistryError(RuntimeError):
    """A registry operation that cannot proceed (no champion, nothing to roll back, no logged model)."""


def _cut(text: str, limit: int = TAG_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


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


def resolve_source(client: Any, model_dir: str | Path, *, run_id: str | None = None,
                   model_uri: str | None = None) -> ModelSource:
    """Find the logged model to register: explicit arguments first, else model.json's `mlflow` block.

    `models:/<model_id>` is used as is; `runs:/<run_id>/<name>` and a bare run id are mapped to the
    run's logged model (the newest one when the run logged several).
    """
    logged = read_model_meta(model_dir).mlflow or {}
    model_uri = model_uri or logged.get("model_uri") or None
    run_id = run_id or logged.get("run_id") or None
    if not model_uri and not run_id:
        raise ValueError(f"{Path(model_dir) / 'model.json'}: field 'mlflow.run_id' missing and no "
                         "--run-id/--model-uri given: nothing to register (train with MLflow tracking on)")
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
    the model was trained), then model.json's `lineage` (`ModelMeta.lineage`), and only then from the registering process
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
    recorded = read_model_meta(model_dir).lineage

    def pick(*keys: str) -> str | None:
        for key in keys:
            if run_tags.get(key):
                return run_tags[key]
        return next((recorded[k] for k in keys if recorded.get(k)), None)

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
        keys = (*METRIC_TAGS, *dimension_tags.TAGS, "gate", "gate_reason", TEST_HASH_TAG, CONTENT_HASH_TAG,
                DATA_VERSION_TAG, *LINEAGE_TAGS)
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
    def set_version_tag(self, version: str, key: str, value: str) -> None:
        """One model-version tag (free text cut to TAG_VALUE_LIMIT)."""
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
        self.set_version_tag(version, SCORE_ON_PREFIX + scores.test_manifest_hash,
                              scores.to_record(at=utc_now(), **extra))

    def gate(self, version: str, champion: str | None = None, *, on: str | None = None,
             rescored: bool = False, extra_checks: Sequence[GateCheck] = ()) -> GateDecision:
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
                                     rescored=rescored, extra_checks=extra_checks)
        except (RegistryError, ScoresError) as e:
            decision = GateDecision(False, f"not promoted ({e})", champion)
        for key, value in decision.to_tags().items():
            self.set_version_tag(version, key, value)
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
                self.set_version_tag(previous, "rolled_back_at", at)
                self.set_version_tag(previous, "rollback_reason", reason)
        for key, value in version_tags.items():
            self.set_version_tag(version, key, value)
        event = {"action": action, "version": version, "previous": previous, "reason": reason, "forced": forced,
                 "at": at, "below": below}
        return self._write_event(state, event, new_top)

    def promote(self, version: str, *, force: bool = False, reason: str = "", on: str | None = None,
                rescored: bool = False, extra_checks: Sequence[GateCheck] = ()) -> dict[str, Any]:
        """Gate `version` against the champion and move `champion` if it passes (or if forced)."""
        version = str(self.get(version).version)
        current = self.alias_version(CHAMPION)
        if current == version:
            raise RegistryError(f"model {self.name!r}: v{version} is already the champion")
        decision = self.gate(version, current, on=on, rescored=rescored, extra_checks=extra_checks)
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


def promote(params: Params, version: str, *, force: bool = False, reason: str = "",
            client: Any = None) -> dict[str, Any]:
    return Registry(params, client).promote(version, force=force, reason=reason)


def rollback(params: Params, *, reason: str = "", client: Any = None) -> dict[str, Any]:
    return Registry(params, client).rollback(reason=reason)
