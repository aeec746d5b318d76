"""The data stamp a recurring pipeline run computes itself (`lineage.data_fingerprint`, the
data-stamp task): new, changed or removed clips, locally or under an s3:// prefix, change it, so
ingest's cache is reused exactly while the data is unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from base_settings import base_params

from affectflow.orchestration import kfp_io
from affectflow.orchestration.run_form import stage_config
from affectflow.storage.s3 import ObjectInfo
from affectflow.tracking.lineage import data_fingerprint


def _params(root: str):
    return base_params({"paths.data_root": root,
                              "ingest.corpora": [{"name": "c", "adapter": "ravdess", "root": "c"}]})


def test_local_files_new_changed_or_removed_change_the_stamp(tmp_path: Path) -> None:
    corpus = tmp_path / "c" / "Actor_01"
    corpus.mkdir(parents=True)
    (corpus / "a.wav").write_bytes(b"x" * 10)
    p = _params(str(tmp_path))
    first = data_fingerprint(p)
    assert data_fingerprint(p) == first  # nothing changed: same stamp, the cached ingest is reused
    (corpus.parent / "Actor_02").mkdir()
    (corpus.parent / "Actor_02" / "b.wav").write_bytes(b"y")
    added = data_fingerprint(p)
    assert added != first
    os.utime(corpus / "a.wav", ns=(1, 1))
    assert data_fingerprint(p) not in (first, added)
    (corpus.parent / "Actor_02" / "b.wav").unlink()
    assert data_fingerprint(p) not in (first, added)


def test_objects_under_an_s3_prefix_are_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [ObjectInfo("corpora/c/Actor_01/a.wav", 10, "e1")]

    class Store:
        def list(self, uri: str) -> list[ObjectInfo]:
            assert uri == "s3://bucket/corpora/c"
            return list(listed)

    monkeypatch.setattr("affectflow.storage.s3.store_for", lambda params=None: Store())
    p = _params("s3://bucket/corpora")
    first = data_fingerprint(p)
    listed.append(ObjectInfo("corpora/c/Actor_02/b.wav", 12, "e2"))  # a new speaker's clips arrive
    second = data_fingerprint(p)
    listed[0] = ObjectInfo("corpora/c/Actor_01/a.wav", 10, "e3")  # an object rewritten in place
    assert len({first, second, data_fingerprint(p)}) == 3


def test_the_data_stamp_task_puts_the_label_first(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.wav").write_bytes(b"x")
    p = _params(str(tmp_path))
    config = stage_config(p, "ingest")
    stamp = kfp_io.data_stamp_task(config, "")
    assert stamp == data_fingerprint(p)
    assert kfp_io.data_stamp_task(config, "dvc.lock:abc") == f"dvc.lock:abc@{stamp}"
    assert json.loads(config)["paths"]["data_root"] == str(tmp_path)
