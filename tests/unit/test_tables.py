"""Every open set has one table, and every settings `Literal` that names its members is tied to it:
adding a corpus adapter, a model, a feature kind, a study method or a stage in one place and not
the other fails here, not in a user's run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

from affectflow.config import (
    AugmentAblationConfig,
    AugmentConfig,
    CorpusSpec,
    DannAblationConfig,
    FeaturesConfig,
    StudyCondition,
    TrainConfig,
)
from affectflow.corpora import ADAPTERS
from affectflow.features.kinds import KINDS
from affectflow.models import ARCHS
from affectflow.stages import STAGES

SRC = Path(__file__).resolve().parents[2] / "src" / "affectflow"


def literal_values(model: type[Any], field: str) -> set[str]:
    """The names a settings field's `Literal` (or list of `Literal`) allows."""
    ann = model.model_fields[field].annotation
    while get_origin(ann) is not Literal:
        (ann,) = [a for a in get_args(ann) if a is not type(None)]
    return set(get_args(ann))


def test_literal_values_reads_lists_and_plain_literals() -> None:
    assert literal_values(TrainConfig, "normalize") == {"global", "utterance", "corpus"}
    assert literal_values(FeaturesConfig, "kinds") >= {"logmel"}


@pytest.mark.parametrize(("model", "field", "table", "exact"), [
    (CorpusSpec, "adapter", set(ADAPTERS), True),
    (TrainConfig, "model", set(ARCHS), True),
    (FeaturesConfig, "kinds", {k.setting for k in KINDS.values()}, True),
    (AugmentConfig, "feature", set(KINDS), False),  # the kinds a generator can learn
    (AugmentAblationConfig, "model", set(ARCHS), False),  # the study's CPU-sized models
    (DannAblationConfig, "model", set(ARCHS), False),
    (StudyCondition, "method", None, True),
], ids=lambda v: v if isinstance(v, str) else None)
def test_every_name_literal_is_tied_to_its_table(model: type[Any], field: str, table: set[str] | None,
                                                   exact: bool) -> None:
    if table is None:  # study methods: the generalization study's table
        from affectflow.studies.generalization import METHODS

        table = set(METHODS)
    allowed = literal_values(model, field)
    if exact:
        assert allowed == table, f"{model.__name__}.{field} allows {sorted(allowed)}; its table has {sorted(table)}"
    else:
        assert allowed <= table, f"{model.__name__}.{field} allows {sorted(allowed - table)}, not in its table"


def test_stage_names_elsewhere_are_rows_of_the_stage_table() -> None:
    from affectflow.contracts.workdir import ARTIFACTS
    from affectflow.studies.generalization import METHODS

    for name, method in METHODS.items():
        assert set(method.stages) <= set(STAGES), f"study method {name} runs stages {method.stages}"
    assert {a.stage for a in ARTIFACTS.values()} <= {s.output for s in STAGES.values()}  # the output folders
    for spec in STAGES.values():
        assert set(spec.inputs) | set(spec.optional) <= set(ARTIFACTS)


def test_a_model_reads_a_kind_of_the_table_and_takes_its_facts_from_it() -> None:
    for name, spec in ARCHS.items():
        assert spec.feature in KINDS, f"model {name} reads '{spec.feature}', not a feature kind"
        for fact in spec.feature_facts:
            assert fact in spec.built_with.model_fields, f"model {name}: '{fact}' is not a field it is built with"
            assert fact not in spec.config.model_fields, f"model {name}: '{fact}' is a user setting too"


NAMES = "|".join(sorted({*KINDS, *ARCHS}))
COMPARISON = re.compile(rf"""(==|!=)\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)|\bin\s*[(\[{{]["']({NAMES})["']""")


def test_no_code_compares_a_feature_kind_or_model_name_outside_its_table() -> None:
    """`kind == "ssl"` / `model == "ssl_head"` is how a new kind or model gets missed: code asks the
    tables (`features.kinds.KINDS`, `models.ARCHS`) what a kind or model is instead."""
    tables = {SRC / "features" / "kinds.py", SRC / "models" / "__init__.py"}
    allowed = {SRC / "config" / "augment.py"}  # a settings validator: config sits below the tables
    found = [f"{f.relative_to(SRC)}:{i}: {line.strip()}" for f in sorted(SRC.rglob("*.py")) if f not in tables | allowed
             for i, line in enumerate(f.read_text().splitlines(), 1) if COMPARISON.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("kind", [k for k, row in KINDS.items() if row.engine != "ssl"])  # ssl: test_ssl.py
def test_a_kind_row_extracts_arrays_of_the_shape_it_declares(kind: str) -> None:
    """A row's pieces agree: its stored configuration builds its extractor, whose arrays have the
    shape the validate gate will ask of them (frame-level: (dim, frames); else (dim,))."""
    import numpy as np

    from affectflow.config import load_params
    from affectflow.corpora.demo import utterance
    from affectflow.features.keys import kind_config

    p = load_params(None, {"features.egemaps.levels": ["functionals", "lld"]})
    row = KINDS[kind]
    extract = row.extractor(kind_config(p, kind), p.audio.sample_rate, "cpu", kind)
    (arr,) = extract([utterance("happy", speaker=1, seed=0, sr=p.audio.sample_rate, duration=1.0)])
    shape = row.shape(p.features, kind)
    assert arr.ndim == shape.ndim == (2 if row.frame_level else 1)
    assert shape.dim0 is None or arr.shape[0] == shape.dim0
    assert np.isfinite(arr).all()
    assert row.normalization("utterance") == ("utterance" if row.frame_level else "global")
    assert row.normalization("corpus") == "global"
