"""Stage 1a — ingest: corpus folders / CSV manifests -> one manifest with speaker-independent splits.

Every clip is probed once (header, content hash, full decode so truncated files are caught).
Corpora on S3 (`s3://` roots) are mirrored into this pod's cache to be listed and probed, but the
manifest names each clip by its `s3://` URI, which any later task (another pod, a fresh filesystem)
resolves through the storage layer (`affectflow.audio.read_source`); local corpora keep absolute paths.
Bad audio (including a clip without `audio.min_speech_s` of speech, `affectflow.speech`) either stops
the run with an error naming the file (`on_bad_audio: fail`) or goes to a
quarantine list while everything else is processed (`skip`); so does a clash of utterance ids
that keeping the file suffix does not resolve (`unique_ids`). Byte-identical clips are counted in
the summary (`duplicate_audio`) and logged as a warning; the validate stage judges them. Outputs are
written atomically.
"""

from __future__ import annotations

import logging
import math
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
from affectflow.contracts.manifest import (
    COLUMNS,
    OPTIONAL_COLUMNS,
    Utterance,
    manifest_hash,
    map_label,
    write_manifest,
)
from affectflow.contracts.splits import apply_splits
from affectflow.contracts.workdir import MANIFEST_FILE
from affectflow.corpora import get_adapter
from affectflow.corpora.demo import is_synthetic
from affectflow.runtime.progress import progress
from affectflow.speech import SpeechCheck
from affectflow.stages.spec import Inputs, StageOutput
from affectflow.storage import atomic_path, atomic_write_json

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """Ingest cannot go on; the message names the file and the reason."""


@dataclass
class IngestResult(StageOutput):
    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST_FILE


def probe(path: str, min_duration_s: float = 0.0, speech_check: SpeechCheck | None = None) -> dict[str, Any]:
    """Header facts + content hash + a full decode; raises AudioError on anything unusable (the
    rules and texts of `affectflow.audio`, which `affectflow predict` applies too), and on a clip
    without `speech_check`'s minimum of speech (streamed with the decode, not a second read)."""
    inf = audio.check_header(path)
    counter = speech_check.counter(inf.sample_rate) if speech_check is not None and speech_check.enabled else None
    try:
        with sf.SoundFile(path) as f:
            n = 0
            for block in f.blocks(blocksize=1 << 16, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise audio.AudioError(path, audio.NOT_FINITE)
                if (why := audio.range_problem(block)) not in (None, "int16", "clip"):  # repaired on load
                    raise audio.AudioError(path, why)
                n += len(block)
                if counter is not None:
                    counter.feed(audio.to_mono(block))
    except audio.AudioError:
        raise
    except Exception as e:
        raise audio.AudioError(path, f"truncated or corrupt audio ({e})") from None
    audio.check_decoded(path, n, inf.frames)
    duration = n / inf.sample_rate
    audio.check_duration(path, duration, min_duration_s)
    if counter is not None and speech_check is not None and (why := speech_check.reason_for(counter.finish())):
        raise NoSpeech(path, why)
    return {"duration": duration, "sample_rate": inf.sample_rate, "channels": inf.channels,
            "sha256": audio.file_hash(path)}


class NoSpeech(audio.AudioError):
    """Usable audio with less than the minimum of speech (`ingest.on_no_speech`, not `on_bad_audio`)."""


def _probe_safe(args: tuple[str, float, SpeechCheck | None]) -> tuple[str, dict[str, Any] | None, str | None, bool]:
    """(path, facts, reason, whether the reason is too little speech) of one file."""
    path, min_dur, speech_check = args
    try:
        return path, probe(path, min_dur, speech_check), None, False
    except audio.AudioError as e:
        return path, None, e.reason, isinstance(e, NoSpeech)


LOCAL_PATH = "local_path"
"""Working column (not in the manifest): where this pod reads the clip (the mirror of an s3:// corpus)."""


def recorded_path(local: str, local_root: str, uri_root: str | None) -> str:
    """The path the manifest records: the s3:// URI of a clip from a mirrored S3 corpus, else `local`."""
    if uri_root is None:
        return local
    try:
        rel = Path(local).relative_to(local_root)
    except ValueError:  # not under the mirrored folder (e.g. a CSV manifest naming other locations)
        return local
    return f"{uri_root.rstrip('/')}/{rel.as_posix()}"


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
        uri_root = None
        if root.startswith("s3://"):  # mirror into the local cache: adapters and probes read files
            from affectflow.storage.s3 import localize_for

            uri_root, root = root, str(localize_for(params, root))
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
                "path": recorded_path(u.path, root, uri_root), LOCAL_PATH: u.path,
                "corpus": spec.name, "role": spec.role,
                "speaker": f"{spec.name}/{u.speaker}", "gender": u.gender or "",
                "label": u.label, "emotion": emotion,
                "valence": math.nan if u.valence is None else float(u.valence),
                "arousal": math.nan if u.arousal is None else float(u.arousal),
                "dominance": math.nan if u.dominance is None else float(u.dominance),
                "intensity": u.intensity,
            })
    df = pd.DataFrame(rows)
    if df.empty:
        raise IngestError("no clip maps to the configured classes " f"{classes}; dropped labels: {dict(dropped)}")
    return df, dropped


def unique_ids(df: pd.DataFrame, on_clash: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Rows with unique utterance ids, and the rows quarantined for a clash (skip mode).

    Ids are `corpus/stem`, so `x.wav` and `x.flac` beside each other would share one: such rows keep
    their suffix (`corpus/x.wav`, `corpus/x.flac`; the others keep their id, so manifests stay
    comparable). A clash that remains (the same file listed twice, adapters naming two files alike)
    stops the run, or with `on_bad_audio: skip` quarantines every row after the first."""
    df = df.copy()
    clash = df["utt_id"].duplicated(keep=False)
    for _, group in df[clash].groupby("utt_id"):
        suffixes = [Path(p).suffix.lower() for p in group["path"]]
        if group["path"].is_unique and len(set(suffixes)) == len(suffixes) and all(suffixes):
            df.loc[group.index, "utt_id"] = [f"{u}{s}" for u, s in zip(group["utt_id"], suffixes, strict=True)]
    dup = df["utt_id"].duplicated(keep="first")
    if not dup.any():
        return df, []
    if on_clash == "fail":
        shared = df["utt_id"].duplicated(keep=False)
        first = df.loc[shared].sort_values("utt_id")
        example = first[first["utt_id"] == first["utt_id"].iloc[0]]
        raise IngestError(f"{int(shared.sum())} clips share utterance ids, e.g. '{example['utt_id'].iloc[0]}' "
                          f"for {example['path'].tolist()} (set ingest.on_bad_audio: skip to quarantine all but "
                          "the first)")
    owner = df.loc[~dup].set_index("utt_id")["path"]
    quarantined = []
    for _, row in df[dup].iterrows():
        taken = owner[row["utt_id"]]
        why = "listed twice" if taken == row["path"] else f"utterance id already used by {taken}"
        quarantined.append({"utt_id": row["utt_id"], "corpus": row["corpus"], "path": row["path"],
                            "reason": f"duplicate utterance id: {why}"})
    return df[~dup].reset_index(drop=True), quarantined


def duplicate_audio(df: pd.DataFrame, examples: int = 3) -> dict[str, Any]:
    """Byte-identical clips (same sha256 under different ids): counted and named here, judged by the
    validate stage (a warning within one split and label, unless validation.fail_on_duplicate_audio;
    an error across splits or labels)."""
    groups = [sorted(g) for _, g in df.groupby("sha256")["utt_id"] if len(g) > 1]
    groups.sort()
    return {"groups": len(groups), "clips": sum(len(g) for g in groups), "examples": groups[:examples]}


def summarize(df: pd.DataFrame, dropped: Counter[str], quarantined: int,
              synthetic: list[str] | None = None) -> dict[str, Any]:
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
        "duplicate_audio": duplicate_audio(df),
        "manifest_hash": manifest_hash(df),
        "synthetic_corpora": synthetic if synthetic is not None else synthetic_corpora(df),
    }


def synthetic_corpora(df: pd.DataFrame, column: str = "path") -> list[str]:
    return sorted(str(c) for c, path in df.groupby("corpus")[column].first().items() if is_synthetic(path))


def ingest(params: Params, out_dir: str | Path | None = None) -> IngestResult:
    """Build `manifest.parquet`, `summary.json` and (if any) `quarantine.csv` in `out_dir`."""
    out = Path(out_dir) if out_dir is not None else params.workdir() / "ingest"
    df, dropped = collect_utterances(params)
    df, clashes = unique_ids(df, params.ingest.on_bad_audio)
    # Probe where this pod reads each clip; report and record the manifest's path.
    recorded = dict(zip(df[LOCAL_PATH], df["path"], strict=True))
    probed_local, bad_local = probe_all(df[LOCAL_PATH].drop_duplicates().tolist(), params, names=recorded)
    probed = {recorded[p]: facts for p, facts in probed_local.items()}
    bad = [(recorded[p], why) for p, why in bad_local]
    # Nothing is written before every check has passed, so a failed run leaves the previous
    # outputs as they were; the manifest is written last, as the commit point of the stage.
    quarantine = out / "quarantine.csv"
    held = [*clashes, *_bad_rows(df, bad)]
    kept = df[df["path"].isin(probed)].reset_index(drop=True)
    if kept.empty:
        _write_quarantine(quarantine, held)  # the reasons are the useful part of this failure
        raise IngestError(f"every clip was quarantined; see {quarantine}")
    facts = pd.DataFrame([probed[p] for p in kept["path"]])
    kept = apply_splits(pd.concat([kept, facts], axis=1), params.splits)[COLUMNS + list(OPTIONAL_COLUMNS)]
    summary = summarize(kept, dropped, len(held), synthetic_corpora(df[df["path"].isin(probed)], LOCAL_PATH))
    summary["quarantine_reasons"] = quarantine_reasons(held)
    if held:
        log.warning("ingest: %d clips quarantined (%s); see %s", len(held),
                    ", ".join(f"{why}: {k}" for why, k in summary["quarantine_reasons"].items()), quarantine)
        _write_quarantine(quarantine, held)
    else:
        quarantine.unlink(missing_ok=True)
    dups = summary["duplicate_audio"]
    if dups["groups"]:
        log.warning("ingest: %d clips are byte-identical copies (%d groups), e.g. %s; the validate stage checks "
                    "them (validation.fail_on_duplicate_audio)", dups["clips"], dups["groups"],
                    " = ".join(dups["examples"][0]))
    atomic_write_json(out / "summary.json", summary)
    write_manifest(kept, out / MANIFEST_FILE)
    return IngestResult(out, summary)


def quarantine_reasons(held: list[dict[str, str]]) -> dict[str, int]:
    """Quarantined clips per kind of reason (the reason's text before its first ':' or '('), so a
    skip of silent or broken clips is said in the summary, not only in quarantine.csv."""
    kinds = Counter(r["reason"].split(":")[0].split(" (")[0].strip() for r in held)
    return dict(sorted(kinds.items()))


def probe_all(paths: list[str], params: Params, names: dict[str, str] | None = None,
              ) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """Probe every file (in worker processes); returns facts per good path and (path, reason) per bad one.

    With `on_bad_audio: fail` the first bad file raises IngestError (naming it as `names` maps it: the
    clip's s3:// URI rather than this pod's mirror) and the queued probes are cancelled.
    """
    # Generated corpora (the demo's marker file) are declared not to be speech: the speech check
    # judges recordings, so their clips skip it (the summary lists them as synthetic_corpora).
    check = SpeechCheck.from_audio_config(params.audio)
    jobs = [(p, params.audio.min_duration_s, None if is_synthetic(p) else check) for p in paths]
    probed: dict[str, dict[str, Any]] = {}
    bad: list[tuple[str, str]] = []
    workers = params.ingest.workers
    pool: Executor = ProcessPoolExecutor(max_workers=workers) if workers > 1 else _Inline()
    try:
        results = pool.map(_probe_safe, jobs, chunksize=16)
        for path, facts, reason, no_speech in progress(results, "probe audio", total=len(jobs), unit="clip"):
            if facts is None:
                policy = "on_no_speech" if no_speech else "on_bad_audio"
                if getattr(params.ingest, policy) == "fail":
                    shown = (names or {}).get(path, path)
                    raise IngestError(f"{shown}: {reason} (set ingest.{policy}: skip to quarantine it)")
                bad.append((path, str(reason)))
            else:
                probed[path] = facts
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return probed, bad


def _bad_rows(df: pd.DataFrame, bad: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Quarantine rows for unusable files: every manifest row that names one."""
    reasons = dict(bad)
    rows = df[df["path"].isin(reasons)]
    return [{"utt_id": u, "corpus": c, "path": p, "reason": reasons[p]}
            for u, c, p in zip(rows["utt_id"], rows["corpus"], rows["path"], strict=True)]


def _write_quarantine(path: Path, held: list[dict[str, str]]) -> None:
    q = pd.DataFrame(held, columns=["utt_id", "corpus", "path", "reason"])
    with atomic_path(path) as tmp:
        q.to_csv(tmp, index=False)


class _Inline(Executor):
    """A stand-in for a process pool when workers == 1 (no pickling, easier debugging)."""

    def map(self, fn, *iterables, timeout=None, chunksize=1, **kwargs):  # type: ignore[override]
        return map(fn, *iterables)


def run(params: Params, inputs: Inputs, out_dir: Path) -> IngestResult:
    return ingest(params, out_dir)
