"""Speaker-independent splits: folds are groups of speakers, so no speaker can be in two splits.

Speakers of each corpus are dealt into `n_folds` folds separately (a target corpus gets its own
test speakers too), alternating genders and filling the fold with the fewest clips first, so folds
are balanced by gender and size. The validation split is carved from the training speakers.
Everything is a pure function of (manifest, seed): the same inputs give the same folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from affectflow.config import SplitsConfig


class LeakageError(AssertionError):
    """A speaker appears in more than one split."""


def assign_folds(df: pd.DataFrame, n_folds: int, seed: int) -> pd.Series:
    """Fold index per row; every speaker lands in exactly one fold (per corpus)."""
    folds = pd.Series(-1, index=df.index, dtype="int64")
    rng = np.random.default_rng(seed)
    for _corpus, cdf in df.groupby("corpus", sort=True):
        stats = cdf.groupby("speaker").agg(n=("utt_id", "size"), gender=("gender", "first")).reset_index()
        order: list[str] = []
        by_gender = [g.sort_values("speaker") for _, g in stats.groupby("gender", sort=True)]
        for g in by_gender:
            perm = rng.permutation(len(g))
            order.extend(g["speaker"].to_numpy()[perm].tolist())
        k = min(n_folds, len(stats))
        load = np.zeros(k)
        count = np.zeros(k, dtype=int)
        n_of = dict(zip(stats["speaker"], stats["n"], strict=True))
        fold_of: dict[str, int] = {}
        # Round-robin within each gender block keeps genders balanced; ties go to the lightest fold.
        for spk in order:
            f = int(np.lexsort((load, count))[0])
            fold_of[spk] = f
            load[f] += n_of[spk]
            count[f] += 1
        folds.loc[cdf.index] = cdf["speaker"].map(fold_of).astype("int64")
    return folds


def assign_splits(
    df: pd.DataFrame,
    test_fold: int,
    val_fraction: float,
    seed: int,
    test_speakers: Sequence[str] = (),
) -> pd.Series:
    """train / val / test per row. Test = the fold `test_fold` (or the listed speakers)."""
    split = pd.Series("train", index=df.index, dtype="object")
    wanted = set(test_speakers)
    rng = np.random.default_rng(seed + 1)
    for _corpus, cdf in df.groupby("corpus", sort=True):
        if wanted:
            raw = cdf["speaker"].str.split("/", n=1).str[-1]
            is_test = cdf["speaker"].isin(wanted) | raw.isin(wanted)
        else:
            n_folds = int(cdf["fold"].max()) + 1
            is_test = cdf["fold"] == (test_fold % max(n_folds, 1))
        split.loc[cdf.index[is_test.to_numpy()]] = "test"
        train_spk = cdf.loc[~is_test.to_numpy()]
        stats = train_spk.groupby("speaker")["gender"].first().reset_index()
        if len(stats) < 3:
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
    return split


def check_no_leakage(df: pd.DataFrame) -> None:
    """Raise LeakageError naming the speakers found in more than one split."""
    n = df.groupby("speaker")["split"].nunique()
    bad = n[n > 1]
    if len(bad):
        raise LeakageError(f"speakers in more than one split: {sorted(bad.index)[:10]}")


def apply_splits(df: pd.DataFrame, cfg: SplitsConfig, test_fold: int | None = None) -> pd.DataFrame:
    """Return a copy with `fold` and `split` columns for the configured (or given) test fold."""
    out = df.copy()
    out["fold"] = assign_folds(out, cfg.n_folds, cfg.seed)
    fold = cfg.test_fold if test_fold is None else test_fold
    out["split"] = assign_splits(out, fold, cfg.val_fraction, cfg.seed, cfg.test_speakers)
    check_no_leakage(out)
    return out
