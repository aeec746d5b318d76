# `mlflow db upgrade` for the chart: bring the tracking schema at $MLFLOW_BACKEND_STORE_URI to this
# MLflow's version (an empty database gets the full schema). Waits up to $DB_WAIT_SECONDS for the
# database to accept connections; on Postgres an advisory lock makes concurrent runs (the pre-upgrade
# hook Job, the init containers of several server replicas) wait for each other. The URI is read
# from the environment, never from the command line.
import os
import sys
import time

import mlflow.db
import sqlalchemy

LOCK_KEY = 0x61666C77  # "aflw"
uri = os.environ["MLFLOW_BACKEND_STORE_URI"]
deadline = time.monotonic() + float(os.environ.get("DB_WAIT_SECONDS", "300"))
engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
while True:
    try:
        conn = engine.connect()
        break
    except sqlalchemy.exc.OperationalError as exc:
        if time.monotonic() > deadline:
            sys.exit(f"database {engine.url.host}:{engine.url.port} not reachable: {exc.orig}")
        print(f"waiting for the database at {engine.url.host}:{engine.url.port} ...", flush=True)
        time.sleep(5)
with conn:
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        conn.commit()
    try:
        mlflow.db.upgrade.callback(uri)
    finally:
        if postgres:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            conn.commit()
print("MLflow tracking schema is up to date", flush=True)
