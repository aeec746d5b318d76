"""The tables the gate checks and their expectations: the manifest with per-row facts, the
per-(split, class) counts, one table per feature kind."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before GX is imported: no usage events

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import soundfile as sf
from great_expectations.expectations.expectation import Expectation
from great_expectations.expectations.row_conditions import Column

from affectflow.config import Params
from affectflow.runtime.progress import progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ROLES = ("source", "target", "heldout")
REQUIRED = ("utt_id", "path", "corpus", "role", "speaker", "duration", "sample_rate", "channels",
            "sha256", "fold", "split")
"""Columns every row needs; `label`/`emotion` are required on labelled (role=source) rows only."""
LABELLED = ("label", "emotion")
TAIL_FRAMES = 4096
"""Frames decoded at the end of each file: reaching the tail proves the file is not truncated,
at a fraction of the cost of a full decode (ingest already decoded everything once)."""
SOURCE_ROWS = Column("role") == "source"
IDS_PER_GROUP = 3
"""Row ids listed per offending group (e.g. per leaked speaker) in the report; the count says the rest."""


@dataclass
class Table:
    """One pandas table the gate validates, and the column that names its rows in the report."""

    name: str
    df: pd.DataFrame
    id_column: str
    expectations: list[Expectation]


def check(cls: type[Expectation], name: str, description: str, *, show: Sequence[str] = (),
          group: Sequence[str] = (), **kwargs: Any) -> Expectation:
    """An expectation tagged with a stable check name and the context columns its report shows.

    `group`: offending rows are summarised per distinct value of these columns (a leaked speaker is
    one problem, not sixty rows).
    """
    return cls(description=description, meta={"check": name, "show": list(show), "group": list(group)},
               **kwargs)


# ----------------------------------------------------------------------------- manifest facts
def audio_problem(path: str, duration: float, tolerance: float) -> str | None:
    """Why a clip cannot be used as the manifest describes it, or None if it can.

    Opens the file, seeks to its last `TAIL_FRAMES` frames and decodes them (truncated FLAC/OGG fail
    here), and compares the header's duration with the manifest's (a truncated or replaced WAV
    shows up as a shorter header).
    """
    try:
        with sf.SoundFile(path) as f:
            frames, rate = int(f.frames), int(f.samplerate)
            if frames <= 0:
                return "empty audio (0 frames)"
            start = max(0, frames - TAIL_FRAMES)
            f.seek(start)
            tail = f.read(frames - start, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError variants
        return f"cannot decode ({e})"
    if len(tail) < frames - start:
        return f"truncated: decoded up to frame {start + len(tail)} of {frames}"
    if not np.isfinite(tail).all():
        return "audio contains NaN or infinite samples"
    header = frames / rate
    if math.isfinite(duration) and abs(header - duration) > tolerance * max(header, duration):
        return f"header says {header:.3f} s, manifest says {duration:.3f} s"
    return None


def s3_existing(uris: list[str]) -> set[str]:
    """Which of these s3:// URIs exist: one listing per bucket under the keys' common (string) prefix."""
    if not uris:
        return set()
    from affectflow.storage import s3

    keys: dict[str, list[str]] = {}
    for uri in uris:
        u = s3.S3Uri.parse(uri)
        keys.setdefault(u.bucket, []).append(u.key)
    found: set[str] = set()
    for bucket, ks in keys.items():
        for obj in s3.shared_store().list(f"s3://{bucket}/{os.path.commonprefix(ks)}"):  # noqa: RUF071 (an S3 prefix is a string prefix)
            found.add(f"s3://{bucket}/{obj.key}")
    return found


def audio_facts(df: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-row `file_exists` and `audio_error` (None: fine, not checked, or already reported).

    `s3://` paths (corpora on S3) are checked for existence with one listing per bucket, as a later pod
    reads them, and not decoded here (ingest decoded every clip; features checks each clip's bytes
    against its sha256). Other remote (`scheme://`) paths get None in both columns and are counted.
    """
    decode = params.validation.check_decode
    exists: list[bool | None] = []
    errors: list[str | None] = []
    counts = {"checked": 0, "decoded": 0, "remote_unchecked": 0}
    on_s3 = s3_existing([p for p in df["path"].tolist() if isinstance(p, str) and p.startswith("s3://")])
    rows = zip(df["path"].tolist(), df["duration"].tolist(), strict=True)
    for path, duration in progress(rows, "check audio", total=len(df), unit="clip"):
        if not isinstance(path, str) or not path:
            exists.append(None)  # the not-null check reports it
            errors.append(None)
            continue
        if path.startswith("s3://"):
            counts["checked"] += 1
            exists.append(path in on_s3)
            errors.append(None)
            continue
        if "://" in path:
            counts["remote_unchecked"] += 1
            exists.append(None)
            errors.append(None)
            continue
        counts["checked"] += 1
        ok = os.path.isfile(path)
        exists.append(ok)
        if ok and decode:
            counts["decoded"] += 1
            dur = float(duration) if duration is not None else math.nan
            errors.append(audio_problem(path, dur, params.validation.duration_tolerance))
        else:
            errors.append(None)
    facts = pd.DataFrame({"file_exists": pd.Series(exists, dtype=object, index=df.index),
                          "audio_error": pd.Series(errors, dtype=object, index=df.index)})
    return facts, counts


def speaker_facts(df: pd.DataFrame) -> pd.DataFrame:
    """Per-row `speaker_splits` (how many splits this row's speaker appears in) and clips per split."""
    per_speaker = df.groupby("speaker", dropna=False)["split"].agg(
        n="nunique", clips=lambda s: ", ".join(f"{k}: {v}" for k, v in s.value_counts().sort_index().items()))
    # a row without a speaker is the not_null check's finding, not a speaker in several splits
    return pd.DataFrame({"speaker_splits": df["speaker"].map(per_speaker["n"]).fillna(1).astype(int),
                         "clips_per_split": df["speaker"].map(per_speaker["clips"])}, index=df.index)


def copy_facts(df: pd.DataFrame) -> pd.DataFrame:
    """Per-row facts about the clip's byte-identical copies (same sha256): splits and labels they span.

    One clip twice in the same split with the same label only weighs it double; copies across
    splits leak test audio into training, and copies with different labels mean one label is wrong.
    """
    g = df.groupby("sha256", dropna=True)
    names = {col: g[col].agg(lambda s: ", ".join(sorted(str(v) for v in s.dropna().unique())))
             for col in ("split", "emotion")}
    return pd.DataFrame({
        "copy_splits": df["sha256"].map(g["split"].nunique()).fillna(1).astype(int),
        "copy_labels": df["sha256"].map(g["emotion"].nunique()).fillna(1).clip(lower=1).astype(int),
        "copies_in_splits": df["sha256"].map(names["split"]),
        "copies_labelled": df["sha256"].map(names["emotion"]),
    }, index=df.index)


def manifest_table(df: pd.DataFrame, params: Params) -> tuple[Table, dict[str, int]]:
    """The manifest with derived columns, and the expectations on it."""
    facts, counts = audio_facts(df, params)
    data = pd.concat([df, facts, speaker_facts(df), copy_facts(df)], axis=1)
    a, v = params.audio, params.validation
    exps: list[Expectation] = [
        check(gxe.ExpectTableRowCountToBeBetween, "has_rows", "the manifest has at least one clip",
              min_value=1),
        *[check(gxe.ExpectColumnValuesToNotBeNull, f"not_null:{c}", f"every clip has a `{c}`",
                show=["path"], column=c) for c in REQUIRED],
        *[check(gxe.ExpectColumnValuesToNotBeNull, f"not_null:{c}", f"every labelled (source) clip has a `{c}`",
                show=["path", "corpus"], column=c, row_condition=SOURCE_ROWS) for c in LABELLED],
        check(gxe.ExpectColumnValuesToBeUnique, "utt_id_unique", "utterance ids are unique",
              show=["path"], group=["utt_id"], column="utt_id"),
        check(gxe.ExpectColumnValuesToBeInSet, "role_valid", f"role is one of {list(ROLES)}",
              column="role", value_set=list(ROLES)),
        check(gxe.ExpectColumnDistinctValuesToContainSet, "has_source", "some clips are labelled (role=source)",
              column="role", value_set=["source"]),
        check(gxe.ExpectColumnValuesToBeInSet, "split_valid", f"split is one of {list(SPLITS)}",
              show=["speaker"], column="split", value_set=list(SPLITS)),
        check(gxe.ExpectColumnValuesToBeInSet, "emotion_in_classes",
              "labelled (source) clips carry one of ingest.classes", show=["corpus", "label"],
              column="emotion", value_set=list(params.ingest.classes), row_condition=SOURCE_ROWS),
        check(gxe.ExpectColumnValuesToBeInSet, "file_exists", "every audio file exists",
              show=["path"], column="file_exists", value_set=[True]),
    ]
    if v.check_decode:
        exps.append(check(gxe.ExpectColumnValuesToBeNull, "audio_decodes",
                          "every file opens, its tail decodes to finite samples and its header "
                          "duration matches the manifest", show=["path"], column="audio_error"))
    exps += [
        check(gxe.ExpectColumnValuesToBeBetween, "duration_in_range",
              f"durations within audio.min_duration_s..max_duration_s ({a.min_duration_s}..{a.max_duration_s} s)",
              show=["path"], column="duration", min_value=a.min_duration_s, max_value=a.max_duration_s),
        check(gxe.ExpectColumnValuesToBeUnique, "sha256_unique", "no audio content appears twice (sha256)",
              show=["copies_in_splits", "copies_labelled"], group=["sha256"], column="sha256",
              severity="critical" if v.fail_on_duplicate_audio else "warning"),
        check(gxe.ExpectColumnValuesToBeInSet, "copies_in_one_split",
              "copies of one clip (same sha256) never span splits (test audio would leak into training)",
              show=["copies_in_splits"], group=["sha256"], column="copy_splits", value_set=[1]),
        check(gxe.ExpectColumnValuesToBeInSet, "copies_agree_on_label",
              "copies of one clip (same sha256) carry the same emotion", show=["copies_labelled"],
              group=["sha256"], column="copy_labels", value_set=[1]),
        check(gxe.ExpectColumnValuesToBeInSet, "speaker_single_split",
              "no speaker appears in more than one split", show=["clips_per_split"],
              group=["speaker"], column="speaker_splits", value_set=[1]),
    ]
    return Table("manifest", data, "utt_id", exps), counts


def class_counts(df: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Labelled clips per (split, class), over the splits the labelled rows use and every class.

    Target-role corpora are left out: they are unlabelled as far as training is concerned (DANN).
    Classes absent from a split show up as 0 rather than disappearing.
    """
    src = df[df["role"] == "source"]
    present = set(src["split"].dropna())
    # train is always counted: a manifest that leaves it empty (one speaker, who lands in the test
    # fold) shows 0 per class there and fails, instead of passing with nothing to train on
    splits = [s for s in SPLITS if s in present or s == "train"]
    n = src.groupby(["split", "emotion"]).size()
    rows = [{"cell": f"{s}/{c}", "split": s, "emotion": c, "count": int(n.get((s, c), 0))}
            for s in splits for c in classes]
    return pd.DataFrame(rows, columns=["cell", "split", "emotion", "count"]).astype({"count": int})


def class_count_table(df: pd.DataFrame, params: Params) -> Table:
    k = params.validation.min_examples_per_class_per_split
    exp = check(gxe.ExpectColumnValuesToBeBetween, "min_examples_per_class",
                f"at least {k} labelled clips of each class in each split "
                "(validation.min_examples_per_class_per_split)",
                show=["split", "emotion"], column="count", min_value=k)
    return Table("class_counts", class_counts(df, params.ingest.classes), "cell", [exp])


# ----------------------------------------------------------------------------- feature facts
@dataclass(frozen=True)
class KindSpec:
    """What every array of one feature kind must look like, and the store key params give it."""

    kind: str
    key: str
    """Config hash the features stage files this kind under for the current params."""
    ndim: int
    dim0: int | None
    """Expected first dimension; None: whatever most clips have (they must agree)."""
    dim0_name: str


def feature_specs(params: Params) -> list[KindSpec]:
    """The feature kinds `params.features` asks for (as the features stage names them) and their
    shapes (each kind's row in `affectflow.features.kinds`)."""
    from affectflow.features.keys import feature_keys, kind_spec, requested_kinds

    keys = feature_keys(params)
    specs: list[KindSpec] = []
    for kind in requested_kinds(params):
        shape = kind_spec(kind).shape(params.features, kind)
        specs.append(KindSpec(kind, keys[kind], shape.ndim, shape.dim0, shape.dim0_name))
    return specs


def feature_facts(features: Any, kind: str, utt_ids: Sequence[str]) -> pd.DataFrame:
    """One row per manifest clip: index entries, load error, shape facts and non-finite count."""
    index = features.index[features.index["kind"] == kind]
    entries = index.groupby("utt_id").size()
    keys = index.drop_duplicates("utt_id", keep="last").set_index("utt_id")["key"]
    rows: list[dict[str, Any]] = []
    for u in progress(utt_ids, f"check {kind} features", total=len(utt_ids), unit="clip"):
        n = int(entries.get(u, 0))
        row: dict[str, Any] = {"utt_id": u, "entries": n, "present": n > 0, "key": keys.get(u),
                               "load_error": None, "shape": None, "ndim": np.nan, "dim0": np.nan,
                               "frames": np.nan, "nonfinite": np.nan}
        if n == 1:
            try:
                arr = np.asarray(features.load(kind, [u], finite=False)[0])  # counted below, not refused
            except Exception as e:  # missing or corrupt .npy: report it, keep checking the rest
                row["load_error"] = f"{type(e).__name__}: {e}"
            else:
                row.update(shape="x".join(str(d) for d in arr.shape), ndim=arr.ndim,
                           dim0=arr.shape[0] if arr.ndim else np.nan,
                           frames=arr.shape[1] if arr.ndim >= 2 else np.nan,
                           nonfinite=int(arr.size - np.count_nonzero(np.isfinite(arr))))
        rows.append(row)
    return pd.DataFrame(rows, columns=["utt_id", "entries", "present", "key", "load_error", "shape", "ndim",
                                       "dim0", "frames", "nonfinite"])


def feature_table(features: Any, spec: KindSpec, utt_ids: Sequence[str]) -> Table:
    data = feature_facts(features, spec.kind, utt_ids)
    k = spec.kind
    dim0 = spec.dim0
    if dim0 is None:
        mode = data["dim0"].dropna().mode()
        dim0 = int(mode.iloc[0]) if len(mode) else None
    exps: list[Expectation] = [
        check(gxe.ExpectColumnValuesToBeInSet, f"{k}:present", f"every manifest clip has `{k}` features",
              column="present", value_set=[True]),
        check(gxe.ExpectColumnValuesToBeBetween, f"{k}:one_entry", f"at most one `{k}` index entry per clip",
              column="entries", max_value=1),
        check(gxe.ExpectColumnValuesToBeInSet, f"{k}:current_params",
              f"`{k}` features were computed with the current params (store key {spec.key})",
              column="key", value_set=[spec.key]),
        check(gxe.ExpectColumnValuesToBeNull, f"{k}:loads", f"every `{k}` array file loads",
              column="load_error"),
        check(gxe.ExpectColumnValuesToBeInSet, f"{k}:ndim", f"`{k}` arrays are {spec.ndim}-D",
              show=["shape"], column="ndim", value_set=[spec.ndim]),
        check(gxe.ExpectColumnValuesToBeBetween, f"{k}:finite", f"`{k}` arrays hold only finite values",
              show=["shape"], column="nonfinite", max_value=0),
    ]
    if dim0 is not None:
        why = spec.dim0_name if spec.dim0 is not None else "the size most clips have"
        exps.append(check(gxe.ExpectColumnValuesToBeInSet, f"{k}:dim0",
                          f"`{k}` first dimension is {dim0} ({why})", show=["shape"], column="dim0",
                          value_set=[dim0]))
    if spec.ndim >= 2:
        exps.append(check(gxe.ExpectColumnValuesToBeBetween, f"{k}:frames", f"`{k}` arrays have frames > 0",
                          show=["shape"], column="frames", min_value=1))
    return Table(f"features_{k}", data, "utt_id", exps)
