"""Stage 1a — ingest: corpus folders / CSV manifests -> one manifest with speaker-independent splits.

Every clip is probed once (header, content hash, full decode so truncated files are caught).
Bad audio either stops the run with an error naming the file (`on_bad_audio: fail`) or goes to a
quarantine list while everything else is processed (`skip`). Outputs are written atomically.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from affectflow import audio
from affectflow.config import Params
from affectflow.contracts.manifest import COLUMNS, Utterance, manifest_hash, map_label, write_manifest
from affectflow.contracts.splits import apply_splits
from affectflow.contracts.workdir import MANIFEST_FILE
from affectflow.corpora import get_adapter
from affectflow.corpora.demo import is_synthetic
from affectflow.runtime.progress import progress
from affectflow.stages.spec import Inputs
from affectflow.storage import atomic_path, atomic_write_json

# libsndfile's header log flags a chunk whose declared size disagrees with the file, e.g.
# "data : 16656 (should be 8306)": the file was cut after its header was written.
_CHUNK_SIZE = re.compile(r"^\s*(?P<chunk>\S+)\s*:\s*(?P<declared>\d+)\s*\(should be (?P<actual>\d+)\)", re.M)
# Writers that stream to a pipe cannot seek back to fix the header and leave a placeholder size at or
# above this (sox 0x7ffff000, ffmpeg 0xffffffff); such files are not truncated, just unsized.
_UNSIZED = 0x7FFFF000
_HEADER_SLACK = 8  # bytes: the size of one chunk header


class IngestError(RuntimeError):
    """Ingest cannot go on; the message names the file and the reason."""


@dataclass
class IngestResult:
    manifest: Path
    summary: dict[str, Any]

    @property
    def out_dir(self) -> Path:
        return self.manifest.parent


def header_shortfall(log: str) -> str | None:
    """Why a container (WAV, AIFF, W64, ...) is truncated, from libsndfile's header log; else None.

    libsndfile quietly shortens the frame count of a cut WAV to what is there, so decoding it
    succeeds; only the declared chunk sizes still show that audio is missing. A shortfall of up to
    `_HEADER_SLACK` bytes is tolerated: some writers count the RIFF size from the file start or drop
    the pad byte, which is a header quirk, not lost audio.
    """
    for m in _CHUNK_SIZE.finditer(log):
        declared, actual = int(m["declared"]), int(m["actual"])
        if actual < declared - _HEADER_SLACK and declared < _UNSIZED:
            return f"'{m['chunk']}' chunk declares {declared} bytes but the file holds {actual}"
    return None


def probe(path: str, min_duration_s: float = 0.0) -> dict[str, Any]:
    """Header facts + content hash + a full decode; raises AudioError on anything unusable."""
    if not Path(path).is_file():
        raise audio.AudioError(path, "file not found")
    inf = audio.info(path)
    if inf.frames <= 0:
        raise audio.AudioError(path, "empty audio (0 frames)")
    try:
        with sf.SoundFile(path) as f:
            short = header_shortfall(f.extra_info)
            if short:
                raise audio.AudioError(path, f"truncated audio: {short}")
            n = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise audio.AudioError(path, "audio contains NaN or infinite samples")
                n += len(block)
    except audio.AudioError:
        raise
    except Exception as e:
        raise audio.AudioError(path, f"truncated or corrupt audio ({e})") from None
    if n < inf.frames * 0.99:
        raise audio.AudioError(path, f"truncated audio: header says {inf.frames} frames, decoded {n}")
    duration = n / inf.sample_rate
    if duration < min_duration_s:
        raise audio.AudioError(path, f"too short: {duration:.3f} s < {min_duration_s} s")
    return {"duration": duration, "sample_rate": inf.sample_rate, "channels": inf.channels,
            "sha256": audio.file_hash(path)}


def _probe_safe(args: tuple[str, float]) -> tuple[str, dict[str, Any] | None, str | None]:
    path, min_dur = args
    try:
        return path, probe(path, min_dur), None
    except audio.AudioError as e:
        return path, None, e.reason


def collect_utterances(params: Params) -> tuple[pd.DataFrame, Counter[str]]:
    """Run every configured adapter and map labels; returns rows and counts of dropped labels."""
    rows: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    classes = params.ingest.classes
    for spec in params.ingest.corpora:
        label_map = {**params.ingest.label_map, **spec.label_map}
        stray = {k: v for k, v in label_map.items() if v not in classes}
        if stray:
            # A target that is no class would silently drop every clip of that label: a typo, not a wish.
            where = "ingest.label_map" if not set(stray) & set(spec.label_map) else f"corpus '{spec.name}' label_map"
            raise IngestError(f"{where}: targets {stray} are not in ingest.classes {classes}")
        root = params.corpus_root(spec)
        if root.startswith("s3://"):  # mirror into the local cache: adapters and probes read files
            from affectflow.storage.s3 import localize_for

            root = str(localize_for(params, root))
        if "://" not in root:
            root = str(Path(root).resolve())  # absolute paths: components run from other folders
        try:
            utts: list[Utterance] = get_adapter(spec.adapter)(root)
        except FileNotFoundError as e:
            raise IngestError(str(e)) from None
        if not utts:
            raise IngestError(f"{root}: corpus '{spec.name}' ({spec.adapter}) has no audio files")
        for u in utts:
            emotion = map_label(u.label, classes, label_map)
            if emotion is None:
                raw = u.extra.get("raw_label", u.label)
                dropped[f"{spec.name}:{u.label}" + (f"({raw})" if raw != u.label else "")] += 1
                continue
            rows.append({
                "utt_id": f"{spec.name}/{u.utt_id or Path(u.path).stem}",
                "path": u.path, "corpus": spec.name, "role": spec.role,
                "speaker": f"{spec.name}/{u.speaker}", "gender": u.gender or "",
                "label": u.label, "emotion": emotion,
                "valence": math.nan if u.valence is None else float(u.valence),
                "arousal": math.nan if u.arousal is None else float(u.arousal),
            })
    df = pd.DataFrame(rows)
    if df.empty:
        raise IngestError("no clip maps to the configured classes " f"{classes}; dropped labels: {dict(dropped)}")
    dup = df["utt_id"].duplicated(keep=False)
    if dup.any():
        clash = df.loc[dup].sort_values("utt_id").head(2)
        raise IngestError(f"{int(dup.sum())} clips share utterance ids, e.g. '{clash['utt_id'].iloc[0]}' "
                          f"for {clash['path'].tolist()}")
    return df, dropped


def summarize(df: pd.DataFrame, dropped: Counter[str], quarantined: int) -> dict[str, Any]:
    return {
        "clips": len(df),
        "speakers": int(df["speaker"].nunique()),
        "hours": round(float(df["duration"].sum()) / 3600, 3),
        "corpora": {c: int(n) for c, n in df["corpus"].value_counts().sort_index().items()},
        "classes": {c: int(n) for c, n in df["emotion"].value_counts().sort_index().items()},
        "splits": {
            s: {"clips": int((df["split"] == s).sum()), "speakers": int(df.loc[df["split"] == s, "speaker"].nunique())}
            for s in ("train", "val", "test")
        },
        "dropped_labels": dict(sorted(dropped.items())),
        "quarantined": quarantined,
        "manifest_hash": manifest_hash(df),
        "synthetic_corpora": sorted(str(c) for c, path in df.groupby("corpus")["path"].first().items()
                                    if is_synthetic(path)),
    }


def ingest(params: Params, out_dir: str | Path | None = None) -> IngestResult:
    """Build `manifest.parquet`, `summary.json` and (if any) `quarantine.csv` in `out_dir`."""
    out = Path(out_dir) if out_dir is not None else params.workdir() / "ingest"
    df, dropped = collect_utterances(params)
    probed, bad = probe_all(df["path"].drop_duplicates().tolist(), params)
    # Nothing is written before every check has passed, so a failed run leaves the previous
    # outputs as they were; the manifest is written last, as the commit point of the stage.
    quarantine = out / "quarantine.csv"
    kept = df[df["path"].isin(probed)].reset_index(drop=True)
    if kept.empty:
        _write_quarantine(quarantine, df, bad)  # the reasons are the useful part of this failure
        raise IngestError(f"every clip was quarantined; see {quarantine}")
    facts = pd.DataFrame([probed[p] for p in kept["path"]])
    kept = apply_splits(pd.concat([kept, facts], axis=1), params.splits)[COLUMNS]
    summary = summarize(kept, dropped, len(bad))
    if bad:
        _write_quarantine(quarantine, df, bad)
    else:
        quarantine.unlink(missing_ok=True)
    atomic_write_json(out / "summary.json", summary)
    write_manifest(kept, out / MANIFEST_FILE)
    return IngestResult(manifest=out / MANIFEST_FILE, summary=summary)


def probe_all(paths: list[str], params: Params) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Probe every file (in worker processes); returns facts per good path and (path, reason) per bad one.

    With `on_bad_audio: fail` the first bad file raises IngestError and the queued probes are cancelled.
    """
    jobs = [(p, params.audio.min_duration_s) for p in paths]
    probed: dict[str, dict[str, Any]] = {}
    bad: list[tuple[str, str]] = []
    workers = params.ingest.workers
    pool: Executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline()
    try:
        results = pool.map(_probe_safe, jobs, chunksize=16)
        for path, facts, reason in progress(results, "probe audio", total=len(jobs), unit="clip"):
            if facts is None:
                if params.ingest.on_bad_audio == "fail":
                    raise IngestError(f"{path}: {reason} (set ingest.on_bad_audio: skip to quarantine it)")
                bad.append((path, str(reason)))
            else:
                probed[path] = facts
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return probed, bad


def _write_quarantine(path: Path, df: pd.DataFrame, bad: list[tuple[str, str]]) -> None:
    q = pd.DataFrame(bad, columns=["path", "reason"])
    first = df.drop_duplicates("path").set_index("path")
    q.insert(0, "utt_id", q["path"].map(first["utt_id"]))
    q.insert(1, "corpus", q["path"].map(first["corpus"]))
    with atomic_path(path) as tmp:
        q.to_csv(tmp, index=False)


class _Inline(Executor):
    """A stand-in for a process pool when workers == 1 (no pickling, easier debugging)."""

    def map(self, fn, *iterables, timeout=None, chunksize=1, **kwargs):  # type: ignore[override]
        return map(fn, *iterables)


def run(params: Params, inputs: Inputs, out_dir: Path) -> IngestResult:
    return ingest(params, out_dir)
