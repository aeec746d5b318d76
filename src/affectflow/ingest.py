"""Stage 1a — ingest: corpus folders / CSV manifests -> one manifest with speaker-independent splits.

Every clip is probed once (header, content hash, full decode so truncated files are caught).
Bad audio either stops the run with an error naming the file (`on_bad_audio: fail`) or goes to a
quarantine list while everything else is processed (`skip`). Outputs are written atomically.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from affectflow import audio
from affectflow.config import Params
from affectflow.corpora import get_adapter
from affectflow.manifest import COLUMNS, Utterance, map_label, manifest_hash, write_manifest
from affectflow.progress import progress
from affectflow.splits import apply_splits
from affectflow.storage import atomic_path, atomic_write_json


class IngestError(RuntimeError):
    """Ingest cannot go on; the message names the file and the reason."""


@dataclass
class IngestResult:
    manifest: Path
    summary: dict[str, Any]


def probe(path: str, min_duration_s: float = 0.0) -> dict[str, Any]:
    """Header facts + content hash + a full decode; raises AudioError on anything unusable."""
    if not Path(path).is_file():
        raise audio.AudioError(path, "file not found")
    inf = audio.info(path)
    if inf.frames <= 0:
        raise audio.AudioError(path, "empty audio (0 frames)")
    try:
        with sf.SoundFile(path) as f:
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
        root = params.corpus_root(spec)
        if root.startswith("s3://"):  # mirror into the local cache: adapters and probes read files
            from affectflow.s3 import localize_for

            root = str(localize_for(params, root))
        if "://" not in root:
            root = str(Path(root).resolve())  # absolute paths: components run from other folders
        try:
            utts: list[Utterance] = get_adapter(spec.adapter)(root)
        except FileNotFoundError as e:
            raise IngestError(str(e)) from None
        if not utts:
            raise IngestError(f"{root}: corpus '{spec.name}' ({spec.adapter}) has no audio files")
        label_map = {**params.ingest.label_map, **spec.label_map}
        for u in utts:
            emotion = map_label(u.label, classes, label_map)
            if emotion is None:
                dropped[f"{spec.name}:{u.label}"] += 1
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
    dup = df["utt_id"].duplicated()
    if dup.any():
        raise IngestError(f"duplicate utterance ids, e.g. {df.loc[dup, 'utt_id'].iloc[0]}")
    return df, dropped


def summarize(df: pd.DataFrame, dropped: Counter[str], quarantined: int) -> dict[str, Any]:
    return {
        "clips": int(len(df)),
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
    }


def ingest(params: Params, out_dir: str | Path | None = None) -> IngestResult:
    """Build `manifest.parquet`, `summary.json` and (if any) `quarantine.csv` in `out_dir`."""
    out = Path(out_dir) if out_dir is not None else params.workdir() / "ingest"
    out.mkdir(parents=True, exist_ok=True)
    df, dropped = collect_utterances(params)
    jobs = [(p, params.audio.min_duration_s) for p in df["path"]]
    probed: dict[str, dict[str, Any]] = {}
    bad: list[tuple[str, str]] = []
    workers = max(1, params.ingest.workers)
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline() as pool:
        results = pool.map(_probe_safe, jobs, chunksize=16)
        for path, facts, reason in progress(results, "probe audio", total=len(jobs), unit="clip"):
            if facts is None:
                if params.ingest.on_bad_audio == "fail":
                    raise IngestError(f"{path}: {reason} (set ingest.on_bad_audio: skip to quarantine it)")
                bad.append((path, str(reason)))
            else:
                probed[path] = facts
    quarantine = out / "quarantine.csv"
    if bad:
        with atomic_path(quarantine) as tmp:
            pd.DataFrame(bad, columns=["path", "reason"]).to_csv(tmp, index=False)
    else:
        quarantine.unlink(missing_ok=True)
    df = df[df["path"].isin(probed)].reset_index(drop=True)
    if df.empty:
        raise IngestError("every clip was quarantined; see " + str(quarantine))
    facts = pd.DataFrame([probed[p] for p in df["path"]])
    df = pd.concat([df, facts], axis=1)
    df = apply_splits(df, params.splits)
    df = df[COLUMNS]
    summary = summarize(df, dropped, len(bad))
    write_manifest(df, out / "manifest.parquet")
    atomic_write_json(out / "summary.json", summary)
    return IngestResult(manifest=out / "manifest.parquet", summary=summary)


class _Inline:
    """A stand-in for a process pool when workers == 1 (no pickling, easier debugging)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn, items, chunksize: int = 1):  # noqa: ARG002
        return map(fn, items)
