# The affectflow chart's Postgres backup (a CronJob's upload step): the dump that pg_dump wrote
# (custom format, restorable with pg_restore) goes to s3://<bucket>/<prefix>/mlflow-<UTC time>.dump, and only
# the newest $BACKUP_KEEP dumps under the prefix are kept. Runs in the affectflow CPU image (boto3 through
# affectflow.storage.s3, credentials and endpoint from the AWS_* environment).
import datetime
import os
import sys
from pathlib import Path

from affectflow.storage import s3

dump = Path(os.environ.get("BACKUP_FILE", "/backup/mlflow.dump"))
prefix = os.environ["BACKUP_URI"].rstrip("/")
keep = int(os.environ.get("BACKUP_KEEP", "14"))
if not dump.is_file() or dump.stat().st_size == 0:
    sys.exit(f"{dump}: no dump to upload (pg_dump failed?)")
uri = f"{prefix}/mlflow-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.dump"
info = s3.upload(dump, uri)
print(f"{uri}: {info.size} bytes")
store = s3.S3Store()
bucket = s3.S3Uri.parse(prefix).bucket
dumps = sorted(o.key for o in store.list(prefix + "/") if o.key.rsplit("/", 1)[-1].startswith("mlflow-"))
old = [f"s3://{bucket}/{k}" for k in dumps[:-keep]] if keep > 0 else []
if old:
    store.delete(old)
    print(f"deleted {len(old)} older dump(s), kept {min(keep, len(dumps))}")
