"""The registry on the production backend: a real Postgres server behind a real `mlflow server`.

Postgres (and MySQL) store a registered-model tag value in VARCHAR(5000); sqlite accepts any
length, so the sqlite tests could not see that the earlier one-tag history overflowed after ~28
events. Here a throwaway cluster (initdb / pg_ctl in a temporary folder, 127.0.0.1, a free port;
registry_servers.postgres) backs an `mlflow server`, and the registry goes through 102 promotion
and rollback events: every event is its own small tag, the rollback stack follows a model of it
kept in the test, and the database itself shows the row sizes. Skipped, with the reason, where
Postgres or psycopg2 is not installed (CI installs both: .ci/run, the `dev` extra).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from base_settings import base_params
from mlflow.tracking._tracking_service.utils import _use_tracking_uri as use_tracking_uri
from register_support import evaluation_json, model_json, register
from registry_servers import mlflow_server, postgres, postgres_skip_reason

from affectflow.config import Params
from affectflow.contracts.model_folder import content_hash
from affectflow.tracking.registry import (
    CHAMPION,
    EVENT_PREFIX,
    MAX_EVENT_CHARS,
    Registry,
    RegistryError,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(postgres_skip_reason() is not None, reason=str(postgres_skip_reason()))]

CLASSES = ("neutral", "happy", "sad", "angry")
VERSIONS = 6
EVENTS = 102
POSTGRES_TAG_LIMIT = 5000
"""VARCHAR length of registered_model_tags.value in MLflow's schema."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(mlflow server URL, its Postgres URI)."""
    root = tmp_path_factory.mktemp("mlflow-postgres")
    with postgres() as db, mlflow_server(root, db) as url:
        yield url, db


def _candidates(url: str, tmp_path: Path) -> list[tuple[Path, Path]]:
    """VERSIONS model folders logged by one run on the server, each with its evaluation."""
    import mlflow
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    with use_tracking_uri(url):
        exp = mlflow.MlflowClient().create_experiment("registry-postgres")
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    out = []
    for i in range(VERSIONS):
        model_dir = tmp_path / f"v{i + 1}" / "model"
        model_dir.mkdir(parents=True)
        (model_dir / "model.json").write_text(json.dumps(model_json({"run_id": run.info.run_id}, CLASSES, n=str(i))))
        uar = 0.40 + 0.05 * i
        metrics = model_dir.parent / "metrics.json"
        metrics.write_text(json.dumps(evaluation_json(content_hash(model_dir), run.info.run_id, uar,
                                                      dict.fromkeys(CLASSES, uar), "test-A")))
        out.append((model_dir, metrics))
    return out


def _tag_rows(db: str, name: str) -> list[tuple[str, int]]:
    """(key, length of value) of the registered model's tags, read from Postgres itself."""
    import psycopg2

    conn = psycopg2.connect(db.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT key, length(value) FROM registered_model_tags WHERE name = %s", (name,))
            return [(k, int(n or 0)) for k, n in cur.fetchall()]
    finally:
        conn.close()


def test_history_of_100_plus_events_on_postgres(server: tuple[str, str], tmp_path: Path) -> None:
    url, db = server
    params: Params = base_params({"paths.workdir": str(tmp_path / "work"), "tracking.uri": url,
                                        "registry.model_name": "affectflow-pg", "registry.min_uar_gain": 0.01})
    for i, (model_dir, metrics) in enumerate(_candidates(url, tmp_path)):
        res = register(params, model_dir, metrics, tmp_path / f"out{i}")
        assert res["promoted"] and res["champion"] == str(i + 1), res["gate"]["reason"]
    reg = Registry(params)
    stack = [str(v) for v in range(1, VERSIONS + 1)]  # the test's own model of the rollback stack
    events = VERSIONS
    step = 0
    while events < EVENTS:  # steps of three events: back, forward, forward / back, back, forward
        moves = ("back", "forward", "forward") if step % 2 == 0 else ("back", "back", "forward")
        for k, move in enumerate(moves):
            if move == "back":
                back = reg.rollback(reason=f"canary {step}.{k} regressed")
                stack.pop()
                assert back["champion"] == stack[-1]
            else:
                order = [str(1 + (2 * step + k + j) % VERSIONS) for j in range(VERSIONS)]
                target = next(v for v in order if v != stack[-1])
                reg.promote(target, force=True, reason=f"re-release {step}.{k}")
                stack.append(target)
            events += 1
        step += 1
    assert reg.alias_version(CHAMPION) == stack[-1]
    assert reg.stack() == stack
    history = reg.history()
    assert len(history) == events >= EVENTS
    assert [e["seq"] for e in history] == list(range(1, events + 1))

    rows = dict(_tag_rows(db, params.registry.model_name))
    event_rows = {k: n for k, n in rows.items() if k.startswith(EVENT_PREFIX)}
    assert len(event_rows) == events
    assert max(rows.values()) <= MAX_EVENT_CHARS < POSTGRES_TAG_LIMIT  # every tag far below the column
    assert sum(event_rows.values()) > 3 * POSTGRES_TAG_LIMIT  # what one history tag would have needed

    # The backend does enforce the column: the earlier one-tag history could not have been stored.
    with pytest.raises(Exception, match=r"(?i)value too long|character varying\(5000\)"):
        reg.client.set_registered_model_tag(params.registry.model_name, "one_tag_history",
                                            "x" * (POSTGRES_TAG_LIMIT + 1))

    # Rollback walks all the way back through the stack, then says there is nothing left.
    while len(stack) > 1:
        stack.pop()
        assert reg.rollback()["champion"] == stack[-1]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert reg.alias_version(CHAMPION) == "1"
