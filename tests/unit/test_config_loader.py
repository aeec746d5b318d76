"""params.yaml loading: typed sections, errors that name the key, dotted overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from affectflow.config import ConfigError, flatten, load_params, parse_override

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


PARAMS_YAML_OWN = {"studies.generalization.conditions": "the study's rows are data params.yaml holds (the "
                   "settings class's default is the two-row minimum)"}
"""The only values params.yaml states that are not the settings classes' defaults, and why."""


def differences_from_defaults(path: Path) -> dict[str, tuple[object, object]]:
    """Every flattened value of the params file at `path` that is not the settings classes' default
    (params.yaml's own sections left out): key -> (file's, default)."""
    given, defaults = flatten(load_params(path)), flatten(load_params(None))
    own = tuple(PARAMS_YAML_OWN)
    return {k: (given.get(k, "<absent>"), defaults.get(k, "<absent>")) for k in given.keys() | defaults.keys()
            if not k.startswith(own) and given.get(k, "<absent>") != defaults.get(k, "<absent>")}


def test_repo_params_yaml_is_valid_and_mirrors_the_defaults():
    """One home for every default (the settings classes): params.yaml restates them for people to read
    and edit, so every value it holds, at every depth, must be the class's default."""
    p = load_params(REPO / "params.yaml")
    assert yaml.safe_load((REPO / "params.yaml").read_text()).keys() == p.model_dump().keys()
    differ = differences_from_defaults(REPO / "params.yaml")
    assert not differ, "params.yaml differs from the settings classes' defaults (yaml, default):\n" + "\n".join(
        f"  {k}: {a!r} != {b!r}" for k, (a, b) in sorted(differ.items()))


def test_the_defaults_check_sees_a_nested_leaf_and_skips_only_params_yaml_own(tmp_path):
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["features"]["logmel"]["n_mels"] += 1
    tree["studies"]["generalization"]["conditions"] = {"only": {"method": "svm"}}
    assert set(differences_from_defaults(write(tmp_path, tree))) == {"features.logmel.n_mels"}


def test_unknown_key_names_the_key(tmp_path):
    path = write(tmp_path, {"train": {"epochz": 3}})
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(path) in str(err.value) and "train.epochz: unknown key" in str(err.value)
    with pytest.raises(ConfigError, match=r"splits\.n_fold: unknown key"):
        load_params(None, ["splits.n_fold=5"])
    with pytest.raises(ConfigError, match="trian: unknown key"):
        load_params(None, ["trian.epochs=5"])


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be a valid number"):
        load_params(write(tmp_path, {"train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"ingest\.on_bad_audio: Input should be 'fail' or 'skip'"):
        load_params(None, ["ingest.on_bad_audio=ignore"])
    with pytest.raises(ConfigError, match=r"ingest\.corpora\.0\.adapter"):
        load_params(None, {"ingest.corpora": [{"name": "x", "adapter": "timit", "root": "x"}]})
    with pytest.raises(ConfigError, match=r"splits\.val_fraction: Input should be less than 1"):
        load_params(None, ["splits.val_fraction=1.5"])


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = write(tmp_path, {"train": {"epochs": 40, "lr": 0.01}})
    p = load_params(path, ["train.epochs=3", "ingest.classes=[angry, sad]", "ingest.on_bad_audio=skip"])
    assert p.train.epochs == 3 and isinstance(p.train.epochs, int)
    assert p.train.lr == 0.01  # untouched keys keep the file's value
    assert p.ingest.classes == ["angry", "sad"] and p.ingest.on_bad_audio == "skip"
    assert load_params(path, {"train.epochs": 5}).train.epochs == 5
    assert parse_override("train.epochs=7") == ("train.epochs", 7)
    # YAML 1.1 reads `1e-4` as a string; the typed field still turns it into the number.
    assert load_params(None, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)


def test_bad_overrides_and_files(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        load_params(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        load_params(None, ["train.epochs=3", "train.epochs.x=1"])
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)
    with pytest.raises(ConfigError, match=r"ingest\.classes: .*unique"):
        load_params(None, ["ingest.classes=[sad, sad]"])


def test_flow_yaml_text_stays_on_one_line_however_long():
    from affectflow.config import yaml_text

    corpora = [{"name": f"corpus{i}", "adapter": "csv", "root": f"/data/corpus{i}/manifest.csv"} for i in range(8)]
    text = yaml_text(corpora, flow=True).strip()
    assert "\n" not in text and yaml.safe_load(text) == corpora
