"""Speaker-independent splits: pure functions of (manifest, settings), checked on small tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from affectflow.config import SplitsConfig
from affectflow.contracts.splits import LeakageError, SplitError, apply_splits, check_no_leakage


def table(corpus: str, n_female: int, n_male: int, clips=lambda i: 10) -> pd.DataFrame:
    """`clips(i)` rows for speaker i; speakers alternate female/male like RAVDESS actors."""
    rows = []
    genders = ["female"] * n_female + ["male"] * n_male
    for i, g in enumerate(genders, start=1):
        rows += [{"utt_id": f"{corpus}/{i:02d}_{k}", "corpus": corpus, "speaker": f"{corpus}/{i:02d}",
                  "gender": g} for k in range(clips(i))]
    return pd.DataFrame(rows)


def speakers_of(df: pd.DataFrame, split: str, corpus: str | None = None) -> set[str]:
    sel = df["split"] == split
    if corpus:
        sel &= df["corpus"] == corpus
    return set(df.loc[sel, "speaker"])


def test_same_inputs_same_splits_other_seed_other_splits():
    df = table("ravdess", 12, 12)
    a = apply_splits(df, SplitsConfig(seed=1))
    b = apply_splits(df.sample(frac=1, random_state=0), SplitsConfig(seed=1)).loc[a.index]
    assert a[["fold", "split"]].equals(b[["fold", "split"]])  # row order does not matter either
    c = apply_splits(df, SplitsConfig(seed=2))
    assert not a["fold"].equals(c["fold"])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_speaker_in_exactly_one_fold_and_one_split(seed):
    df = apply_splits(table("ravdess", 12, 12, clips=lambda i: 5 + i % 4), SplitsConfig(seed=seed, val_fraction=0.2))
    assert (df.groupby("speaker")["fold"].nunique() == 1).all()
    assert (df.groupby("speaker")["split"].nunique() == 1).all()
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3]
    assert set(df.groupby("fold")["speaker"].nunique()) == {6}
    check_no_leakage(df)
    assert set(df["split"]) == {"train", "val", "test"}


def test_folds_are_gender_balanced_and_even_in_size():
    clips = lambda i: 5 + (i * 7) % 11  # noqa: E731 -- uneven clip counts per speaker
    df = apply_splits(table("ravdess", 12, 12, clips), SplitsConfig(n_folds=4))
    per_fold = df.drop_duplicates("speaker").groupby(["fold", "gender"]).size().unstack()
    assert (per_fold["female"] == 3).all() and (per_fold["male"] == 3).all()
    sizes = df.groupby("fold").size()
    # A single random deal can be ~20 clips apart here; the best of several stays within half a speaker.
    assert sizes.max() - sizes.min() <= max(clips(i) for i in range(1, 25)) / 2
    # Odd numbers: no fold gets more than one speaker above another of the same gender.
    df = apply_splits(table("x", 5, 3), SplitsConfig(n_folds=4))
    counts = df.drop_duplicates("speaker").groupby(["fold", "gender"]).size().unstack(fill_value=0)
    assert counts["female"].max() - counts["female"].min() <= 1
    assert counts["male"].max() - counts["male"].min() <= 1


def test_test_split_is_the_chosen_fold():
    df = table("ravdess", 12, 12)
    for fold in range(4):
        out = apply_splits(df, SplitsConfig(test_fold=fold))
        assert speakers_of(out, "test") == set(out.loc[out["fold"] == fold, "speaker"])
    with pytest.raises(SplitError, match=r"splits\.test_fold: 4"):
        apply_splits(df, SplitsConfig(test_fold=4))


def test_explicit_test_speakers_qualified_or_bare():
    df = pd.concat([table("ravdess", 4, 4), table("emodb", 3, 3)], ignore_index=True)
    out = apply_splits(df, SplitsConfig(test_speakers=["ravdess/01", "02"]))
    # "02" is bare, so it names speaker 02 of every corpus.
    assert speakers_of(out, "test") == {"ravdess/01", "ravdess/02", "emodb/02"}
    check_no_leakage(out)
    with pytest.raises(SplitError, match=r"splits\.test_speakers: \['ravdess/99'\]"):
        apply_splits(df, SplitsConfig(test_speakers=["ravdess/01", "ravdess/99"]))


def test_val_is_carved_from_training_speakers_with_both_genders():
    df = apply_splits(table("ravdess", 12, 12), SplitsConfig(val_fraction=0.2))
    test, val, train = (speakers_of(df, s) for s in ("test", "val", "train"))
    assert not (val & test) and not (val & train) and not (train & test)
    assert len(test) == 6 and len(val) == round(0.2 * 18) and len(train) == 18 - len(val)
    assert set(df.loc[df["split"] == "val", "gender"]) == {"female", "male"}


def test_too_few_training_speakers_gives_no_val():
    df = apply_splits(table("tiny", 2, 1), SplitsConfig(n_folds=3))
    assert set(df["split"]) == {"train", "test"}
    assert df.groupby("split")["speaker"].nunique().to_dict() == {"test": 1, "train": 2}


def test_each_corpus_gets_its_own_test_speakers():
    rav, emo = table("ravdess", 12, 12), table("emodb", 5, 5)
    both = apply_splits(pd.concat([rav, emo], ignore_index=True), SplitsConfig(val_fraction=0.2))
    for corpus, n_spk in (("ravdess", 24), ("emodb", 10)):
        assert speakers_of(both, "test", corpus), corpus
        assert speakers_of(both, "val", corpus), corpus
        n_test = len(speakers_of(both, "test", corpus))
        assert n_test == int(np.ceil(n_spk / 4)) or n_test == n_spk // 4
    check_no_leakage(both)
    # Adding a corpus does not reshuffle another one: RAVDESS's folds and splits stay put.
    alone = apply_splits(rav, SplitsConfig(val_fraction=0.2))
    with_emo = both[both["corpus"] == "ravdess"].set_index("utt_id")
    assert alone.set_index("utt_id")[["fold", "split"]].equals(with_emo.loc[alone["utt_id"], ["fold", "split"]])


def test_leakage_check_names_the_speakers():
    df = pd.DataFrame({"speaker": ["a", "a", "b"], "split": ["train", "test", "train"]})
    with pytest.raises(LeakageError, match=r"\['a'\]"):
        check_no_leakage(df)
