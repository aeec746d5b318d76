"""Speaker-independent splits: folds are groups of speakers, so no speaker can be in two splits.

Speakers of each corpus are dealt into `n_folds` folds separately (a target corpus gets its own
test speakers too), one gender at a time in a seeded random order, each speaker to a fold with the
fewest speakers so far and among those the fewest clips. Of `FOLD_DEALS` such random deals the one
with the most even fold sizes is kept, so folds are balanced by gender and size and still differ
from seed to seed. The validation split is carved from the training speakers.
Everything is a pure function of (manifest, seed): the same inputs give the same folds, and each
corpus draws from its own random stream, so adding a corpus never reshuffles another one's test set.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from affectflow.config import SplitsConfig

# Random deals tried per corpus when fold sizes differ; more only matters for corpora whose
# speakers have very uneven clip counts, and each deal is a few microseconds per speaker.
FOLD_DEALS = 64
# Below this many training speakers in a corpus no validation speakers are carved off: taking one
# of two would leave a single training speaker.
MIN_TRAIN_SPEAKERS_FOR_VAL = 3
NO_TEST_FOLD = -1
"""`assign_splits(test_fold=NO_TEST_FOLD)`: no test speakers, every speaker train or val."""


class LeakageError(AssertionError):
    """A speaker appears in more than one split."""


class SplitError(ValueError):
    """The split settings do not fit the manifest; the message names the setting."""


def corpus_rng(seed: int, corpus: str, stream: int = 0) -> np.random.Generator:
    """A random stream per (seed, corpus, purpose): corpora never share draws."""
    return np.random.default_rng([seed, zlib.crc32(str(corpus).encode()), stream])


def _deal(order: list[str], n_of: dict[str, int], k: int) -> tuple[dict[str, int], float]:
    """Deal speakers in `order` to k folds: fewest speakers first, then fewest clips; returns the
    assignment and its size spread (largest minus smallest fold, in clips)."""
    load = np.zeros(k)
    count = np.zeros(k, dtype=int)
    fold_of: dict[str, int] = {}
    for spk in order:
        f = int(np.lexsort((load, count))[0])
        fold_of[spk] = f
        load[f] += n_of[spk]
        count[f] += 1
    return fold_of, float(load.max() - load.min())


def assign_folds(df: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Fold index per row; every speaker lands in exactly one fold (per corpus)."""
    folds = pd.Series(-1, index=df.index, dtype="int64")
    for corpus, cdf in df.groupby("corpus", sort=True):
        rng = corpus_rng(seed, str(corpus))
        stats = cdf.groupby("speaker").agg(n=("utt_id", "size"), gender=("gender", "first")).reset_index()
        genders = [g["speaker"].to_numpy() for _, g in stats.groupby("gender", sort=True)]
        n_of = dict(zip(stats["speaker"], stats["n"], strict=True))
        k = min(n_folds, len(stats))
        best: tuple[dict[str, int], float] | None = None
        for _ in range(FOLD_DEALS):
            # One gender after another: dealing by speaker count spreads each gender evenly.
            order = [str(s) for g in genders for s in rng.permutation(g)]
            deal = _deal(order, n_of, k)
            if best is None or deal[1] < best[1]:
                best = deal
            if best[1] == 0:
                break
        assert best is not None
        folds.loc[cdf.index] = cdf["speaker"].map(best[0]).astype("int64")
    return folds


def assign_splits(
    df: pd.DataFrame,
    test_fold: int,
    val_fraction: float,
    seed: int,
    test_speakers: Sequence[str] = (),
) -> pd.Series:
    """train / val / test per row. Test = the fold `test_fold` (or the listed speakers).

    Listed speakers may be corpus-qualified (`ravdess/03`) or bare (`03`, matching that id in every
    corpus); a listed speaker found nowhere is a SplitError, since a typo would silently shrink the
    test set. With a list, a corpus none of whose speakers is listed has no test split.
    """
    split = pd.Series("train", index=df.index, dtype="object")
    wanted = set(test_speakers)
    found: set[str] = set()
    for corpus, cdf in df.groupby("corpus", sort=True):
        rng = corpus_rng(seed, str(corpus), stream=1)
        if wanted:
            raw = cdf["speaker"].str.split("/", n=1).str[-1]
            is_test = cdf["speaker"].isin(wanted) | raw.isin(wanted)
            found |= wanted & (set(cdf["speaker"]) | set(raw))
        elif test_fold == NO_TEST_FOLD:
            is_test = pd.Series(False, index=cdf.index)
        else:
            n_folds = int(cdf["fold"].max()) + 1
            is_test = cdf["fold"] == (test_fold % max(n_folds, 1))
        split.loc[cdf.index[is_test.to_numpy()]] = "test"
        train_spk = cdf.loc[~is_test.to_numpy()]
        stats = train_spk.groupby("speaker")["gender"].first().reset_index()
        if len(stats) < MIN_TRAIN_SPEAKERS_FOR_VAL or val_fraction <= 0:
            continue
        n_val = max(1, round(val_fraction * len(stats)))
        # Take validation speakers alternately from each gender so validation is mixed too.
        pools = [rng.permutation(g["speaker"].to_numpy()).tolist() for _, g in stats.groupby("gender", sort=True)]
        val: list[str] = []
        while len(val) < n_val and any(pools):
            for p in pools:
                if p and len(val) < n_val:
                    val.append(p.pop())
        split.loc[train_spk.index[train_spk["speaker"].isin(val).to_numpy()]] = "val"
    if wanted - found:
        raise SplitError(f"splits.test_speakers: {sorted(wanted - found)} match no speaker in the manifest")
    return split


def check_no_leakage(df: pd.DataFrame) -> None:
    """Raise LeakageError naming the speakers found in more than one split."""
    n = df.groupby("speaker")["split"].nunique()
    bad = n[n > 1]
    if len(bad):
        raise LeakageError(f"speakers in more than one split: {sorted(bad.index)[:10]}")


def apply_splits(df: pd.DataFrame, cfg: SplitsConfig, test_fold: int | None = None) -> pd.DataFrame:
    """Return a copy with `fold` and `split` columns for the configured (or given) test fold.

    A `heldout` corpus is all test (nobody trains on it); with `splits.source_test: false` the source
    corpora keep no test speakers (their test fold joins training, validation re-carved)."""
    fold = cfg.test_fold if test_fold is None else test_fold
    if not 0 <= fold < cfg.n_folds:
        raise SplitError(f"splits.test_fold: {fold} is not a fold of splits.n_folds={cfg.n_folds} (0..{cfg.n_folds - 1})")
    out = df.copy()
    out["fold"] = assign_folds(out, cfg.n_folds, cfg.seed)
    role = out["role"] if "role" in out.columns else pd.Series("source", index=out.index)
    out["split"] = assign_splits(out, fold, cfg.val_fraction, cfg.seed, cfg.test_speakers)
    if not cfg.source_test:
        src = role == "source"
        out.loc[src, "split"] = assign_splits(out[src], NO_TEST_FOLD, cfg.val_fraction, cfg.seed)
    out.loc[role == "heldout", "split"] = "test"
    check_no_leakage(out)
    return out
