"""S3 object storage through boto3: `s3://bucket/key` URIs for corpora, features and models.

The endpoint and credentials come from the standard AWS environment (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...), so the same code talks to AWS,
SeaweedFS or MinIO; `params.s3` only tunes transfers (multipart sizes, concurrency, timeouts).

Stages read and write local folders; this module moves whole folders across the boundary:
`localize` mirrors an `s3://` prefix into a local cache (files whose ETag, size and local stamp
are unchanged are not fetched again) and `publish` uploads a finished output folder. Failures
raise `S3Error` subclasses whose messages name the URI and say what went wrong (missing object,
rejected credentials, unreachable endpoint) instead of a bare HTTP status. An endpoint that accepts
connections but never answers fails with `S3EndpointError` after about `s3.max_attempts` x
`s3.read_timeout_s` (plus retry back-off) per request: botocore's retries and s3transfer's download
retries share that one budget, and read timeouts and broken connections are mapped like refused ones.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectflow.config import S3Config
from affectflow.runtime.progress import progress
from affectflow.storage import atomic_path, atomic_write_json, read_json

if TYPE_CHECKING:
    from affectflow.config import Params

SCHEME = "s3://"
MIB = 1 << 20
STATE_DIR = ".etags"
"""Folder inside the cache that records what each localized prefix held (not part of the mirror)."""

# Error codes S3 servers use when the signature or the key id is wrong.
_CREDENTIAL_CODES = frozenset({
    "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
    "AuthorizationHeaderMalformed", "InvalidClientTokenId", "UnrecognizedClientException",
})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


# --------------------------------------------------------------------------- errors
class S3Error(RuntimeError):
    """An S3 operation failed; the message names the URI and the reason."""


class S3NotFoundError(S3Error, FileNotFoundError):
    """The bucket or the object does not exist."""


class S3CredentialsError(S3Error):
    """The server rejected the credentials (or none were found)."""


class S3AccessDeniedError(S3Error):
    """The credentials are valid but lack permission for this bucket or key."""


class S3EndpointError(S3Error):
    """The endpoint cannot be reached (wrong AWS_ENDPOINT_URL, server down, network)."""


# --------------------------------------------------------------------------- URIs
def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith(SCHEME)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """`s3://bucket/some/key` -> S3Uri("bucket", "some/key"); the key may be empty."""
        if not is_s3(uri):
            raise ValueError(f"{uri}: not an s3:// URI")
        bucket, _, key = uri[len(SCHEME):].partition("/")
        if len(bucket) < 3:
            raise ValueError(f"{uri}: bucket name must have at least 3 characters")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix ('' for the bucket root)."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class PublishResult:
    uploaded: int
    skipped: int
    bytes: int


# --------------------------------------------------------------------------- the store
class S3Store:
    """One boto3 client plus transfer settings; safe to share between threads."""

    def __init__(self, settings: S3Config | None = None, client: Any = None):
        self.settings = settings or S3Config()
        self._client = client
        self._session: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            cfg = Config(
                connect_timeout=s.connect_timeout_s,
                read_timeout=s.read_timeout_s,
                # total_max_attempts counts the first try; botocore's `max_attempts` would add one to it.
                retries={"total_max_attempts": s.max_attempts, "mode": "standard"},
                s3={"addressing_style": s.addressing_style},
                max_pool_connections=max(10, s.max_concurrency),
            )
            self._session = boto3.session.Session()
            self._client = self._session.client(
                "s3", endpoint_url=s.endpoint_url or None, config=cfg)
        return self._client

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        s = self.settings
        return TransferConfig(
            multipart_threshold=s.multipart_threshold_mb * MIB,
            multipart_chunksize=s.multipart_chunksize_mb * MIB,
            max_concurrency=s.max_concurrency,
            # s3transfer retries a stalled download 5 times on top of botocore's own attempts: with
            # an endpoint that never answers that multiplied the wait; one budget for both.
            num_download_attempts=s.max_attempts,
            preferred_transfer_client="classic",
        )

    # ------------------------------------------------------------------ error translation
    @contextmanager
    def _errors(self, uri: S3Uri, action: str) -> Iterator[None]:
        """Turn botocore/boto3 failures into S3Error subclasses with a message people can act on."""
        from botocore.exceptions import (
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )
        from botocore.exceptions import (
            ConnectionError as BotoConnectionError,
        )

        try:
            yield
        except S3Error:
            raise
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise S3CredentialsError(
                f"{uri}: cannot {action}: no usable S3 credentials ({e}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except Exception as e:
            # s3transfer wraps what its retries gave up on (RetriesExceededError.last_exception).
            if (timeout := _find_in_chain(e, ReadTimeoutError)) is not None:
                s = self.settings
                raise S3EndpointError(
                    f"{uri}: cannot {action}: S3 endpoint {self.endpoint} accepted the connection but did not "
                    f"answer within s3.read_timeout_s={s.read_timeout_s:g} s ({s.max_attempts} attempt(s), "
                    f"s3.max_attempts); check that the server is healthy ({timeout})") from None
            if (broken := _find_in_chain(e, (BotoConnectionError, HTTPClientError))) is not None:
                raise S3EndpointError(
                    f"{uri}: cannot {action}: S3 endpoint {self.endpoint} is unreachable ({broken}); "
                    "check AWS_ENDPOINT_URL / s3.endpoint_url and that the server is up") from None
            ce = _find_in_chain(e, ClientError)
            if ce is None:
                raise
            raise self._from_client_error(uri, action, ce) from None

    def _from_client_error(self, uri: S3Uri, action: str, e: Any) -> S3Error:
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("403", "Forbidden") or (status == 403 and not code):
            # HEAD responses carry no body, hence no error code: ask a listing, which has one.
            code = self._probe_code(uri) or code
        if code == "NoSuchBucket":
            return S3NotFoundError(f"{uri}: cannot {action}: bucket '{uri.bucket}' does not exist "
                                   f"at {self.endpoint}")
        if code in _NOT_FOUND_CODES or status == 404:
            if self._probe_code(uri) == "NoSuchBucket":
                return S3NotFoundError(f"{uri}: cannot {action}: bucket '{uri.bucket}' does not exist "
                                       f"at {self.endpoint}")
            return S3NotFoundError(f"{uri}: cannot {action}: no such object "
                                   f"(bucket '{uri.bucket}', key '{uri.key}')")
        if code in _CREDENTIAL_CODES:
            key_id = self._access_key_id()
            return S3CredentialsError(
                f"{uri}: cannot {action}: the S3 endpoint {self.endpoint} rejected the credentials "
                f"(access key id '{key_id}', {code}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return S3AccessDeniedError(
                f"{uri}: cannot {action}: access denied; the credentials are valid but may not "
                f"{action} in bucket '{uri.bucket}'")
        return S3Error(f"{uri}: cannot {action}: {code or status} {err.get('Message', '')}".rstrip())

    def _probe_code(self, uri: S3Uri) -> str | None:
        """The error code a listing of the key's bucket returns (None if the listing works)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key, MaxKeys=1)
        except ClientError as e:
            return str(e.response.get("Error", {}).get("Code", "")) or None
        except BotoCoreError:
            return None
        return None

    def _access_key_id(self) -> str:
        """The first characters of the access key id, to tell which credentials were used."""
        creds = self._session.get_credentials() if self._session is not None else None
        key = getattr(creds, "access_key", "") or ""
        return key[:4] + "…" if len(key) > 4 else key

    # ------------------------------------------------------------------ single objects
    def head(self, uri: str) -> ObjectInfo | None:
        """Size and ETag of an object, or None if it does not exist."""
        u = S3Uri.parse(uri)
        from botocore.exceptions import ClientError

        with self._errors(u, "read object metadata"):
            try:
                h = self.client.head_object(Bucket=u.bucket, Key=u.key)
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code", ""))
                if code in _NOT_FOUND_CODES and self._probe_code(u) != "NoSuchBucket":
                    return None
                raise
        return ObjectInfo(u.key, int(h["ContentLength"]), _etag(h["ETag"]))

    def exists(self, uri: str) -> bool:
        """True if the object exists; a missing bucket or rejected credentials still raise."""
        return self.head(uri) is not None

    def upload(self, local: str | Path, uri: str) -> ObjectInfo:
        """Upload one file (multipart above `multipart_threshold_mb`)."""
        u = S3Uri.parse(uri)
        path = Path(local)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file to upload not found")
        with self._errors(u, "upload"):
            self.client.upload_file(str(path), u.bucket, u.key, Config=self.transfer_config())
        info = self.head(uri)
        if info is None or info.size != path.stat().st_size:
            raise S3Error(f"{uri}: upload of {path} did not arrive whole")
        return info

    def download(self, uri: str, local: str | Path) -> Path:
        """Download one object; the local file appears only when complete."""
        u = S3Uri.parse(uri)
        target = Path(local)
        with self._errors(u, "download"), atomic_path(target) as tmp:
            self.client.download_file(u.bucket, u.key, str(tmp), Config=self.transfer_config())
        return target

    def read_bytes(self, uri: str) -> bytes:
        u = S3Uri.parse(uri)
        with self._errors(u, "read"):
            return bytes(self.client.get_object(Bucket=u.bucket, Key=u.key)["Body"].read())

    def write_bytes(self, uri: str, data: bytes) -> None:
        u = S3Uri.parse(uri)
        with self._errors(u, "write"):
            self.client.put_object(Bucket=u.bucket, Key=u.key, Body=data)

    def delete(self, uris: list[str]) -> None:
        """Delete objects (one request per 1000 keys per bucket); missing ones are no error."""
        by_bucket: dict[str, list[str]] = {}
        for uri in uris:
            u = S3Uri.parse(uri)
            by_bucket.setdefault(u.bucket, []).append(u.key)
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                with self._errors(S3Uri(bucket, keys[i]), "delete"):
                    self.client.delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def create_bucket(self, bucket: str) -> None:
        """Create a bucket if it is not there yet (deployments usually pre-create theirs)."""
        u = S3Uri.parse(f"{SCHEME}{bucket}")
        from botocore.exceptions import ClientError

        with self._errors(u, "create bucket"):
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                    "BucketAlreadyExists"):
                    raise

    # ------------------------------------------------------------------ prefixes
    def list(self, uri: str) -> list[ObjectInfo]:
        """Every object under the URI's key prefix (paginated), sorted by key."""
        u = S3Uri.parse(uri)
        out: list[ObjectInfo] = []
        with self._errors(u, "list objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=u.key)
            for page in pages:
                out.extend(ObjectInfo(o["Key"], int(o["Size"]), _etag(o["ETag"]))
                           for o in page.get("Contents", []))
        return sorted(out, key=lambda o: o.key)

    def localize(self, uri: str, cache_dir: str | Path) -> Path:
        """Mirror an s3:// object or prefix under `cache_dir/<bucket>/<key>` and return the local path.

        A file is fetched again only if the remote ETag/size or the local file changed since the last
        localize; local files that no longer exist remotely are removed, so the mirror is exact.
        """
        u = S3Uri.parse(uri)
        cache = Path(cache_dir)
        listed = self.list(uri)
        single = bool(u.key) and any(o.key == u.key for o in listed) and not any(
            o.key.startswith(u.prefix) for o in listed)
        if single:  # one object, e.g. a CSV manifest
            objects = [o for o in listed if o.key == u.key]
            local_root = cache / u.bucket / u.key
        else:  # a folder: keys under "<key>/" (not siblings such as "<key>2/...")
            objects = [o for o in listed if o.key.startswith(u.prefix) and not o.key.endswith("/")]
            local_root = cache / u.bucket / u.prefix
        if not objects:
            self._raise_missing(u)
        for o in objects:  # a key such as "a/../../x" must not write outside the cache
            if ".." in o.key.split("/") or o.key.startswith("/"):
                raise S3Error(f"{SCHEME}{u.bucket}/{o.key}: unsafe key for a local mirror")
        state_file = cache / STATE_DIR / u.bucket / (hashlib.sha256(uri.encode()).hexdigest()[:24] + ".json")
        state: dict[str, dict[str, Any]] = read_json(state_file).get("objects", {}) if state_file.is_file() else {}
        todo = [o for o in objects if not _fresh(cache / u.bucket / o.key, o, state.get(o.key))]
        if todo:
            with ThreadPoolExecutor(self.settings.max_concurrency) as pool:
                jobs = pool.map(lambda o: self.download(f"{SCHEME}{u.bucket}/{o.key}", cache / u.bucket / o.key),
                                todo)
                for _ in progress(jobs, f"fetch {uri}", total=len(todo), unit="file"):
                    pass
        new_state = {o.key: _stamp(cache / u.bucket / o.key, o) for o in objects}
        if local_root.is_dir():
            wanted = {cache / u.bucket / o.key for o in objects}
            for f in list(local_root.rglob("*")):
                if f.is_file() and f not in wanted:
                    f.unlink()
        atomic_write_json(state_file, {"uri": uri, "objects": new_state})
        return local_root

    def _raise_missing(self, u: S3Uri) -> None:
        code = self._probe_code(u)
        if code == "NoSuchBucket":
            raise S3NotFoundError(f"{u}: bucket '{u.bucket}' does not exist at {self.endpoint}")
        raise S3NotFoundError(f"{u}: no objects under this prefix (bucket '{u.bucket}', key '{u.key}')")

    def publish(self, local_dir: str | Path, uri: str) -> PublishResult:
        """Upload every file under `local_dir` to `uri/<relative path>`.

        Files below the multipart threshold whose MD5 equals the remote ETag are skipped, so
        re-publishing a content-addressed folder (features) sends only what is new.
        """
        root = Path(local_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: folder to publish not found")
        u = S3Uri.parse(uri)
        remote = {o.key: o for o in self.list(f"{SCHEME}{u.bucket}/{u.prefix}")}
        files = sorted(p for p in root.rglob("*") if p.is_file())
        threshold = self.settings.multipart_threshold_mb * MIB

        def send(p: Path) -> tuple[bool, int]:
            key = u.join(p.relative_to(root).as_posix()).key
            size = p.stat().st_size
            have = remote.get(key)
            if have is not None and have.size == size and size < threshold and have.etag == _md5(p):
                return False, 0
            self.upload(p, f"{SCHEME}{u.bucket}/{key}")
            return True, size

        uploaded = skipped = nbytes = 0
        with ThreadPoolExecutor(self.settings.max_concurrency) as pool:
            for sent, size in progress(pool.map(send, files), f"publish {uri}", total=len(files), unit="file"):
                uploaded += sent
                skipped += not sent
                nbytes += size
        return PublishResult(uploaded=uploaded, skipped=skipped, bytes=nbytes)


# --------------------------------------------------------------------------- helpers
def _find_in_chain(e: BaseException, cls: type | tuple[type, ...]) -> Any:
    """boto3 wraps botocore errors (S3UploadFailedError, s3transfer's RetriesExceededError): walk the chain."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, cls):
            return cur
        seen.add(id(cur))
        last = getattr(cur, "last_exception", None)
        cur = last if isinstance(last, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def _etag(raw: str) -> str:
    return raw.strip('"')


def _md5(path: Path, chunk: int = MIB) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path, obj: ObjectInfo) -> dict[str, Any]:
    st = path.stat()
    return {"etag": obj.etag, "size": obj.size, "mtime_ns": st.st_mtime_ns}


def _fresh(path: Path, obj: ObjectInfo, seen: dict[str, Any] | None) -> bool:
    """The local copy is what was downloaded for this very ETag and has not been touched since."""
    if seen is None or not path.is_file():
        return False
    st = path.stat()
    return (seen.get("etag") == obj.etag and seen.get("size") == obj.size == st.st_size
            and seen.get("mtime_ns") == st.st_mtime_ns)


def cache_dir_for(params: Params) -> Path:
    """Where s3:// inputs are mirrored: s3.cache_dir, else <workdir>/s3cache, else ~/.cache."""
    if params.s3.cache_dir:
        return Path(params.s3.cache_dir).expanduser()
    if not is_s3(params.paths.workdir):
        return Path(params.paths.workdir) / "s3cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "affectflow" / "s3"


def store_for(params: Params | None = None) -> S3Store:
    return S3Store(params.s3 if params is not None else None)


def localize_for(params: Params, uri: str) -> Path:
    """`localize` with the transfer settings and cache folder from params (what ingest calls)."""
    return store_for(params).localize(uri, cache_dir_for(params))


# Module-level shortcuts with default settings (endpoint and credentials from the environment).
def upload(local: str | Path, uri: str) -> ObjectInfo:
    return S3Store().upload(local, uri)


def download(uri: str, local: str | Path) -> Path:
    return S3Store().download(uri, local)


_shared_lock = threading.Lock()
_shared: S3Store | None = None


def shared_store() -> S3Store:
    """One store (one boto3 client, endpoint and credentials from the environment) per process, for
    readers without params that fetch many objects from threads (decoding clips named by s3:// URIs)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = S3Store()
            _ = _shared.client  # created here, under the lock: boto3 sessions are not thread-safe
        return _shared


def read_bytes(uri: str) -> bytes:
    return shared_store().read_bytes(uri)


def exists(uri: str) -> bool:
    return S3Store().exists(uri)


def list_objects(uri: str) -> list[ObjectInfo]:
    return S3Store().list(uri)


def localize(uri: str, cache_dir: str | Path) -> Path:
    return S3Store().localize(uri, cache_dir)


def publish(local_dir: str | Path, uri: str) -> PublishResult:
    return S3Store().publish(local_dir, uri)
