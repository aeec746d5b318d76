"""The generalization study's rows on an ssl front-end (issue 27), with a tiny random WavLM on three
generated corpora: the product's `ssl_linear` (layer chosen inside the training corpora), the
probe's middle layer, the ssl + ComParE fusion and the adversarial rows all score every held-out
clip on every protocol, and the rows that need no target audio never read the held-out corpus."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_generalization import CLASSES, _params, corpora  # noqa: F401  (the module's corpora fixture)
from test_ssl import save_tiny

from affectflow.contracts.manifest import read_manifest
from affectflow.studies import generalization as G
from affectflow.studies import ssl_rows

SSL_CONDITIONS = {
    "linear_auto": {"method": "recognizer", "overrides": {"train.model": "ssl_linear"}},
    "probe_mid": {"method": "recognizer", "overrides": {"train.model": "ssl_linear", "train.ssl_linear.layer": "middle"}},
    "fusion": {"method": "ssl_compare_fusion", "overrides": {"train.ssl_linear.layer": "middle"}},
    "mlp": {"method": "ssl_mlp", "overrides": {"train.ssl_linear.layer": "middle"}},
    "speaker_adv": {"method": "ssl_speaker_adversarial", "overrides": {"train.ssl_linear.layer": "middle"}},
    "corpus_adv": {"method": "ssl_corpus_adversarial", "overrides": {"train.ssl_linear.layer": "middle"}},
    "dann": {"method": "ssl_dann", "overrides": {"train.ssl_linear.layer": "middle"}},
    "egemaps_fusion": {"method": "ssl_egemaps_fusion", "overrides": {"train.ssl_linear.layer": "middle"}},
    "pair": {"method": "ssl_layer_pair", "overrides": {"train.ssl_linear.layer": "middle"},
             "select": {"l01": {"train.ssl_linear.layer": 0}, "l12": {}}},
    "pair_mean": {"method": "ssl_layer_pair_mean", "overrides": {"train.ssl_linear.layer": 0}},
    "ensemble": {"method": "ssl_linear_mlp_ensemble", "overrides": {"train.ssl_linear.layer": "middle"}},
}


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("wavlm", tmp_path_factory.mktemp("wavlm"))


@pytest.mark.slow
def test_ssl_rows_score_every_held_out_clip_on_every_protocol(corpora: Path, wavlm: Path, tmp_path: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, int]] = []  # (method, held out, rows of the held-out corpus it read)
    for method in [*ssl_rows.ADVERSARY, "ssl_linear_mlp_ensemble"]:  # the rows training a network, spied on
        row = G.METHODS[method]

        def spy(params, df, features, train_corpora, held, cell, _run=row.run, _method=method):
            out = _run(params, df, features, train_corpora, held, cell)
            seen.append((_method, held, int((df["corpus"] == held).sum())))
            return out

        monkeypatch.setitem(G.METHODS, method, dataclasses.replace(row, run=spy))
    reads: list[str] = []
    real_extra = ssl_rows.train_network

    def spy_train(params, X, y, adv, n_adv, extra, n_classes, adv_weight):
        reads.append(f"{n_adv}:{len(extra)}")
        return real_extra(params, X, y, adv, n_adv, extra, n_classes, adv_weight)

    monkeypatch.setattr(ssl_rows, "train_network", spy_train)
    p = _params(corpora, tmp_path, conditions=SSL_CONDITIONS, **{
        "features.ssl.checkpoint": str(wavlm), "features.ssl.batch_size": 8, "features.ssl.chunk_s": 0.8,
        "features.ssl.device": "cpu", "train.epochs": 2, "pretrain.domain_hidden": [8]})
    res = G.run_study(p, tmp_path / "study")
    s = res.summary
    df = read_manifest(tmp_path / "study" / "ingest" / "manifest.parquet")
    cells = pd.read_parquet(tmp_path / "study" / "cells.parquet")
    assert len(cells) == len(SSL_CONDITIONS) * 3
    for _, c in cells.iterrows():
        assert c["n"] == int((df["corpus"] == c["held_out"]).sum())
        assert set(json.loads(c["protocols"])) == set(G.PROTOCOLS)
    for name in SSL_CONDITIONS:
        assert set(s["protocols"]["streamed"][name]["per_corpus"]["alpha"]["per_class_recall"]) == set(CLASSES)
    # the product's linear head chose a layer per cell from the training corpora only
    for cell in (tmp_path / "study" / "cells").glob("heldout_*/linear_auto/seed0-*"):
        held = cell.parent.parent.name.removeprefix("heldout_")
        summary = json.loads((cell / "train" / "summary.json").read_text())
        assert summary["layer_choice"]["rule"].startswith("leave-one-training-corpus-out")
        meta = json.loads((cell / "train" / "model" / "model.json").read_text())
        assert held not in meta["train"]["corpora"] and isinstance(meta["arch_config"]["layer"], int)
    for cell in (tmp_path / "study" / "cells").glob("heldout_*/probe_mid/seed0-*"):
        meta = json.loads((cell / "train" / "model" / "model.json").read_text())
        assert meta["arch_config"]["layer"] == 1  # middle of the tiny encoder's 3 hidden states
    # adversaries: speakers / source corpora need no target audio; only DANN reads the held-out clips
    assert sorted(m for m, _, _ in seen) == sorted([*["ssl_mlp"] * 3, *["ssl_speaker_adversarial"] * 3,
                                                    *["ssl_corpus_adversarial"] * 3, *["ssl_dann"] * 3,
                                                    *["ssl_linear_mlp_ensemble"] * 3])
    by_method = dict(zip([m for m, _, _ in seen], reads, strict=True))
    held_rows = {h: n for _, h, n in seen}
    assert by_method["ssl_mlp"].startswith("0:0") and by_method["ssl_corpus_adversarial"] == "2:0"
    assert by_method["ssl_linear_mlp_ensemble"] == "0:0"  # the ensemble's network: no adversary, no target audio
    assert int(by_method["ssl_speaker_adversarial"].split(":")[0]) >= 4 and by_method["ssl_speaker_adversarial"].endswith(":0")
    n_adv, n_extra = map(int, by_method["ssl_dann"].split(":"))
    assert n_adv == 3 and n_extra in held_rows.values()
    assert np.isfinite([s["protocols"]["streamed"][n]["mean_uar"] for n in SSL_CONDITIONS]).all()
    # the layer pair was chosen per held-out corpus by the inner leave-one-training-corpus-out
    assert {k.split("/")[1] for k in s["selection"]} == {"pair"} and len(s["selection"]) == 3
    assert all(v["chosen"] in ("l01", "l12") for v in s["selection"].values())


def test_rows_outside_the_train_stage_need_a_fixed_layer(corpora: Path, wavlm: Path, tmp_path: Path) -> None:  # noqa: F811
    p = _params(corpora, tmp_path, conditions={"fusion": {"method": "ssl_compare_fusion"}},
                **{"features.ssl.checkpoint": str(wavlm)})
    with pytest.raises(ValueError, match=r"train\.ssl_linear\.layer: auto is chosen inside the train stage"):
        ssl_rows.layer_matrix(p, tmp_path, pd.DataFrame({"utt_id": []}))


def test_a_layer_pair_past_the_last_hidden_state_is_an_error(wavlm: Path, tmp_path: Path) -> None:
    from affectflow.config import load_params

    p = load_params(None, [f"features.ssl.checkpoint={wavlm}", "features.ssl.layers=[]",  # its 3 hidden states
                           "train.ssl_linear.layer=2"])
    with pytest.raises(ValueError, match=r"train\.ssl_linear\.layer: 2 \+ 1 is past the encoder's 3 hidden states"):
        ssl_rows.layer_matrix(p, tmp_path, pd.DataFrame({"utt_id": []}), offset=1)


def test_the_fused_block_carries_the_encoder_blocks_total_variance() -> None:
    w = ssl_rows.block_scale(512, 512 + 88)
    assert (w[:512] == 1).all() and np.isclose((w[512:] ** 2).sum(), 512)
    assert (ssl_rows.block_scale(1024, 1024) == 1).all()  # a layer pair: nothing fused, nothing scaled
