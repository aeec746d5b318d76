# Build MLflow's backend store URI from DB_USER, DB_PASSWORD, DB_HOST, DB_PORT, DB_NAME (and DB_SSLMODE),
# URL-encoding user, password and database name, put it in MLFLOW_BACKEND_STORE_URI (which `mlflow
# server` reads) and replace this process with the command given as arguments. The URI, password
# included, exists only in that process's environment: never in a command line (`ps`, /proc/*/cmdline).
import os
import sys
from urllib.parse import quote, urlencode

e = os.environ
# The driver named: the images ship psycopg2, and SQLAlchemy 2.1 maps a bare postgresql scheme to psycopg 3.
uri = "postgresql+psycopg2://{}:{}@{}:{}/{}".format(
    quote(e["DB_USER"], safe=""), quote(e["DB_PASSWORD"], safe=""), e["DB_HOST"], e["DB_PORT"],
    quote(e["DB_NAME"], safe=""))
if e.get("DB_SSLMODE"):
    uri += "?" + urlencode({"sslmode": e["DB_SSLMODE"]})
os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
os.execvp(sys.argv[1], sys.argv[1:])
