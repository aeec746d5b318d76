# The affectflow chart's MLflow server with authentication (MLflow's basic-auth app): write the auth app's
# configuration into a private file under /tmp (its user store lives in the tracking database, under its own
# alembic table), then replace this process with the command given as arguments (`mlflow server
# --app-name=basic-auth ...`). The admin's name and password reach MLflow through MLFLOW_AUTH_ADMIN_USERNAME /
# MLFLOW_AUTH_ADMIN_PASSWORD (from a Secret), never a command line; the Flask session key, which every replica
# must share, is derived from the admin password unless MLFLOW_FLASK_SERVER_SECRET_KEY is set.
import configparser
import hashlib
import os
import sys
import tempfile

e = os.environ
for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
    if not e.get(name):
        sys.exit(f"mlflow_auth.py: {name} is empty (the chart's mlflow.auth Secret or the backend settings)")
config = configparser.ConfigParser(interpolation=None)
config["mlflow"] = {
    "default_permission": e.get("AUTH_DEFAULT_PERMISSION", "NO_PERMISSIONS"),
    "database_uri": e["MLFLOW_BACKEND_STORE_URI"],
    "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
}
fd, path = tempfile.mkstemp(prefix="mlflow-auth-", suffix=".ini")  # mode 0600
with os.fdopen(fd, "w") as f:
    config.write(f)
os.environ["MLFLOW_AUTH_CONFIG_PATH"] = path
if not e.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
    os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = hashlib.sha256(
        b"affectflow-mlflow-flask|" + e["MLFLOW_AUTH_ADMIN_PASSWORD"].encode()).hexdigest()
os.execvp(sys.argv[1], sys.argv[1:])
