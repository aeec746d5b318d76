"""The PATH arguments of `affectflow predict` as audio files: folders, manifests, s3:// objects and
prefixes (fetched into a temporary folder for the run)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import pandas as pd

from affectflow.corpora import AUDIO_EXTENSIONS, audio_files
from affectflow.corpora.csv_manifest import unsupported_scheme
from affectflow.runtime.progress import progress
from affectflow.storage.s3 import SCHEME, S3NotFoundError, S3Store, S3Uri, is_s3

MANIFEST_SUFFIXES = (".csv", ".parquet")

class PredictInputError(ValueError):
    """An input argument that cannot be used at all (empty folder, manifest without `path`)."""


# ----------------------------------------------------------------------------- inputs
def manifest_paths(path: Path) -> list[str]:
    """Audio paths of a manifest (.csv or .parquet with a `path` column); relative paths resolve
    against the manifest's folder, like the `csv` corpus adapter does."""
    is_csv = path.suffix.lower() == ".csv"
    if is_csv:
        _check_utf8(path)
    try:
        df = pd.read_csv(path) if is_csv else pd.read_parquet(path)
    except Exception as e:  # pandas / pyarrow raise many kinds for a bad file
        raise PredictInputError(f"{path}: cannot read manifest ({e})") from None
    if "path" not in df.columns:
        raise PredictInputError(f"{path}: manifest has no 'path' column (has {list(df.columns)})")
    out = []
    for row, value in enumerate(df["path"]):
        if not isinstance(value, str) or not value.strip():
            raise PredictInputError(f"{path}: row {row}: field 'path' is empty")
        if bad := unsupported_scheme(value):
            raise PredictInputError(f"{path}: row {row}: field 'path': {bad}")
        p = Path(value)
        out.append(value if p.is_absolute() or "://" in value else str(path.parent / p))
    return out


def _check_utf8(path: Path) -> None:
    """A CSV with bytes that are not UTF-8 is refused naming its line and field, not a codec position."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PredictInputError(f"{path}: cannot read manifest ({e.strerror})") from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = data[data.rfind(b"\n", 0, e.start) + 1 : e.start].count(b",")  # unquoted CSV: close enough
        header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
        field = f", field '{header[column].strip()}'" if line > 1 and column < len(header) else ""
        raise PredictInputError(f"{path}: line {line}{field}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                                "save the CSV as UTF-8") from None


def _is_audio_name(name: str) -> bool:
    """The rule of `affectflow.corpora.audio_files`: an audio suffix, not hidden (`._x.wav` forks)."""
    return Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")


def s3_inputs(uri: str, store: S3Store) -> list[str]:
    """An s3:// argument as object URIs: the object itself, else the audio objects under it as a
    prefix (sorted by key). A URI with neither is returned as is: it fails as a missing file when
    fetched, naming the bucket and key."""
    u = S3Uri.parse(uri)
    if Path(u.key).suffix.lower() in MANIFEST_SUFFIXES:
        raise PredictInputError(f"{uri}: manifests are read from local files only; download it "
                                "(its s3:// rows are fetched) or pass the prefix holding the audio")
    try:
        listed = store.list(uri)
    except S3NotFoundError:  # no bucket: the fetch reports it for this input
        return [uri]
    if u.key and not u.key.endswith("/") and any(o.key == u.key for o in listed):
        return [uri]
    under = [o.key for o in listed if o.key.startswith(u.prefix)]
    if not under:
        return [uri]
    found = [f"{SCHEME}{u.bucket}/{key}" for key in under if _is_audio_name(PurePosixPath(key).name)]
    if not found:
        raise PredictInputError(f"{uri}: prefix holds no audio objects ({' '.join(AUDIO_EXTENSIONS)})")
    return found


def collect_inputs(paths: Sequence[str | Path], store: S3Store | None = None) -> list[str]:
    """Expand the PATH arguments: folders recursively (audio suffixes of `affectflow.corpora`),
    s3:// prefixes to their audio objects (`store`, default: endpoint and credentials from the
    environment), manifests to their `path` column, anything else as one file (a missing file
    becomes a per-file error later, not a failure of the whole run)."""
    out: list[str] = []
    for arg in paths:
        if is_s3(arg):
            out.extend(s3_inputs(str(arg), store or S3Store()))
            continue
        if bad := unsupported_scheme(str(arg)):
            raise PredictInputError(f"{arg}: {bad}")
        p = Path(arg)
        if p.is_dir():
            found = audio_files(p)
            if not found:
                raise PredictInputError(f"{p}: folder holds no audio files ({' '.join(AUDIO_EXTENSIONS)})")
            out.extend(str(f) for f in found)
        elif p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            out.extend(manifest_paths(p))
        else:
            out.append(str(p))
    if not out:
        raise PredictInputError("no input paths given")
    return out


@contextlib.contextmanager
def fetched(files: Sequence[str], store: S3Store) -> Iterator[tuple[list[str], dict[int, str]]]:
    """Local paths for `files` (s3:// objects downloaded into a temporary folder, removed on exit;
    others unchanged) and the reason per index of those that could not be fetched.

    Only a missing object (or bucket) or a malformed URI is an input's own error; any other S3
    failure (credentials, endpoint) is raised, since it would fail every S3 input alike."""
    local, errors = list(files), {}
    remote = [i for i, f in enumerate(files) if is_s3(f)]
    if not remote:
        yield local, errors
        return
    with tempfile.TemporaryDirectory(prefix="affectflow-predict-") as tmp:

        def fetch(i: int) -> str | Exception:
            # One folder per input: names repeat across prefixes, and a key such as "a/../../x"
            # must not write outside the temporary folder. The name keeps the audio suffix.
            try:
                name = PurePosixPath(S3Uri.parse(files[i]).key).name or "object"
                return str(store.download(files[i], Path(tmp) / str(i) / name))
            except (S3NotFoundError, ValueError) as e:
                return e

        with ThreadPoolExecutor(store.settings.max_concurrency, thread_name_prefix="s3-fetch") as pool:
            got = progress(zip(remote, pool.map(fetch, remote), strict=True), "fetch s3://", total=len(remote), unit="file")
            for i, res in got:
                if isinstance(res, Exception):  # the message starts with the URI, which the row names already
                    errors[i] = str(res).removeprefix(f"{files[i]}: ").removeprefix("cannot download: ")
                else:
                    local[i] = res
        yield local, errors
