"""The pipeline's run form and the configuration each task is handed.

A Kubeflow run form is for people: a short list of the settings a retraining run actually varies,
each with a description, plus one `params_overrides` YAML field for anything else. The full
params.yaml the pipeline was compiled from travels inside the IR as a constant (`base`), so a run
is `base` + its run-form values + its overrides, validated once by the `resolve-params` task
(errors name the field or the key). That task then hands every stage only the params sections it
reads (`affectflow.stages.STAGES[...].sections`), canonical JSON: a task's cache key changes only
when something it reads changes (a new `registry.min_uar_gain` re-runs register, never train).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from affectflow.config import (
    ConfigError,
    Params,
    Section,
    params_from_text,
    params_yaml,
    parse_yaml,
    yaml_text,
)
from affectflow.stages import STAGES, get
from affectflow.stages.runner import with_feature_kinds

Kind = Literal["bool", "int", "float", "str", "list", "dict", "yaml"]
KFP_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict,
                              "yaml": str}
"""KFP parameter type per kind: lists and mappings are typed (KFP's LIST and STRUCT: the UI and the API take
JSON, not YAML typed into a text box); only a union of types travels as YAML text."""

DATA_VERSION = "data_version"
"""Run-form field handed to the data-stamp task only: an optional label (a DVC revision) put before
the stamp of the corpus roots that task computes in every run (`lineage.data_fingerprint`), which
keys ingest's cache; a schedule leaves it empty and still re-ingests when the data changed."""
OVERRIDES = "params_overrides"
"""Run-form field: YAML mapping of dotted keys (or nested sections) to values, for any setting
that is not a field of its own."""
COMPILE_TIME_SECTIONS = ("pipeline",)
"""Sections baked into the IR at compile time (images, GPUs, secrets, resources)."""


@dataclass(frozen=True)
class RunParam:
    """One run-form field: a params.yaml setting with a name and a description."""

    name: str
    key: str
    description: str

    def kind(self) -> Kind:
        return _kind(_annotation(self.key))

    def encode(self, value: Any) -> Any:
        """The value as the run form holds it (lists and dicts as JSON values, unions as YAML text)."""
        if self.kind() == "yaml":
            return value if isinstance(value, str) else yaml_text(value, flow=True).strip()
        return value

    def decode(self, value: Any) -> Any:
        kind = self.kind()
        if kind in ("yaml", "list", "dict") and isinstance(value, str):  # YAML text (an older run's argument)
            return parse_yaml(value, f"run-form field {self.name} ({self.key})")
        if kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)  # kfp.local hands integers over as floats
        return value


RUN_FORM: tuple[RunParam, ...] = (
    RunParam("data_root", "paths.data_root",
             "Folder or s3:// prefix that relative corpus roots resolve against."),
    RunParam("corpora", "ingest.corpora",
             "Corpora to ingest (a list of {name, adapter, root, role}; role source = labelled training "
             "corpus, target = unlabelled adaptation corpus; adapter csv takes a CSV manifest)."),
    RunParam("classes", "ingest.classes", "Emotion classes to train on (a list); other labels are dropped."),
    RunParam("label_map", "ingest.label_map", "Raw label -> class (a mapping), e.g. {\"calm\": \"neutral\"}."),
    RunParam("model", "train.model", "Recognizer architecture: compare_mlp (ComParE functionals), egemaps_mlp (eGeMAPS), "
                                        "cnn_bigru (log-mel) or ssl_head (features.ssl)."),
    RunParam("epochs", "train.epochs", "Training epochs: the fixed budget (train.checkpoint last) or the most before early stopping "
                                        "on validation UAR (best_val)."),
    RunParam("batch_size", "train.batch_size", "Global training batch (shared out over Ray workers)."),
    RunParam("learning_rate", "train.lr", "Peak AdamW learning rate."),
    RunParam("seed", "train.seed", "Training seed (order, crops, dropout, initialisation)."),
    RunParam("num_workers", "train.num_workers",
             "Ray Train workers: 0 trains inside the task; N >= 1 runs N DDP workers on the Ray cluster."),
    RunParam("augment", "augment.enabled", "Run GAN augmentation and train on kept synthetic samples too."),
    RunParam("augment_generator", "augment.generator", "Generator of the augment stage: wgan_gp or aaec."),
    RunParam("synthetic_ratio", "train.synthetic_ratio",
             "Synthetic samples per real training sample when augmentation is on."),
    RunParam("dann", "pretrain.enabled", "Pretrain the encoder domain-adversarially (DANN) before training."),
    RunParam("dann_targets", "pretrain.target_corpora",
             "Unlabelled adaptation corpora for DANN (a list; [] = every corpus with role target)."),
    RunParam("cross_corpus", "evaluate.cross_corpus", "Other corpora in the manifest to score the model on (a list)."),
    RunParam("gate_min_uar_gain", "registry.min_uar_gain",
             "The champion moves only if the challenger's UAR beats it by at least this much."),
    RunParam("gate_min_class_recall", "registry.min_class_recall",
             "...and no class recall of the challenger is below this floor."),
    RunParam("auto_promote", "registry.auto_promote", "Promote the challenger when the gate passes."),
    RunParam("model_name", "registry.model_name", "Registered model name in MLflow."),
)
"""The curated run form (plus `params_overrides` and `data_version`)."""

RUN_FORM_BY_NAME = {p.name: p for p in RUN_FORM}


def _annotation(key: str) -> Any:
    section, _, rest = key.partition(".")
    model: type[Section] = Params.model_fields[section].annotation  # type: ignore[assignment]
    parts = rest.split(".")
    for part in parts[:-1]:
        model = model.model_fields[part].annotation  # type: ignore[assignment]
    return model.model_fields[parts[-1]].annotation


def _kind(annotation: Any) -> Kind:
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if annotation is str:
        return "str"
    if typing.get_origin(annotation) is Literal and all(isinstance(a, str) for a in typing.get_args(annotation)):
        return "str"
    if typing.get_origin(annotation) is list:
        return "list"
    if typing.get_origin(annotation) is dict:
        return "dict"
    return "yaml"  # unions: YAML text, parsed by the params task


def _get(params: Params, key: str) -> Any:
    node: Any = params
    for part in key.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if isinstance(node, Section) else _plain(node)


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def run_form_defaults(params: Params) -> dict[str, Any]:
    """Run-form field -> its value in `params` (as the form holds it)."""
    out = {p.name: p.encode(_get(params, p.key)) for p in RUN_FORM}
    out[OVERRIDES] = ""
    out[DATA_VERSION] = ""
    return out


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping) and v and all(isinstance(x, str) for x in v) and _is_section(key):
            out.update(_leaves(v, key))
        else:
            out[key] = v
    return out


def _is_section(key: str) -> bool:
    try:
        ann = _annotation(key) if "." in key else Params.model_fields[key].annotation
    except (KeyError, AttributeError):
        return False
    return isinstance(ann, type) and issubclass(ann, Section)


def pipeline_arguments(params: Params, base: Params) -> dict[str, Any]:
    """What a run of the pipeline compiled from `base` needs to reproduce `params`: run-form fields
    that differ, and every other differing setting in `params_overrides`."""
    mine, theirs = run_form_defaults(params), run_form_defaults(base)
    args = {k: v for k, v in mine.items() if v != theirs[k] and k not in (OVERRIDES, DATA_VERSION)}
    covered = {p.key for p in RUN_FORM}
    a = _leaves({s: getattr(params, s).model_dump(mode="json") for s in Params.model_fields
                 if s not in COMPILE_TIME_SECTIONS})
    b = _leaves({s: getattr(base, s).model_dump(mode="json") for s in Params.model_fields
                 if s not in COMPILE_TIME_SECTIONS})
    rest = {k: v for k, v in a.items() if b.get(k) != v and k not in covered}
    if rest:
        args[OVERRIDES] = yaml_text(rest)
    return args


def resolve(base_yaml: str, values: Mapping[str, Any]) -> Params:
    """The run's params: `base` + run-form `values` (by field name) + `params_overrides`."""
    overrides: dict[str, Any] = {}
    for name, value in values.items():
        if name == DATA_VERSION:
            continue
        if name == OVERRIDES:
            continue
        try:
            param = RUN_FORM_BY_NAME[name]
        except KeyError:
            raise ConfigError(f"run-form field {name!r} is not known (known: {', '.join(RUN_FORM_BY_NAME)})") from None
        overrides[param.key] = param.decode(value)
    extra = values.get(OVERRIDES) or ""
    if extra:
        tree = parse_yaml(extra, OVERRIDES)
        if not isinstance(tree, Mapping):
            raise ConfigError(f"{OVERRIDES}: expected a YAML mapping of keys to values, got {type(tree).__name__}")
        for key, value in _leaves(tree).items():
            if key.split(".")[0] in COMPILE_TIME_SECTIONS:
                raise ConfigError(f"{OVERRIDES}: {key}: the pipeline section is compile-time (images, GPUs, "
                                  "secrets); recompile the pipeline instead")
            overrides[key] = value
    return params_from_text(base_yaml, "compiled params.yaml", overrides)


def base_yaml(params: Params) -> str:
    """The compiled-in params.yaml: every section, canonical."""
    return params_yaml(params)


def stage_config(params: Params, stage: str) -> str:
    """The configuration string a stage task is handed: its sections, canonical JSON."""
    sections = get(stage).sections
    params = with_feature_kinds(params)  # features.kinds: what the enabled stages read, plus the extra ones
    return json.dumps({s: getattr(params, s).model_dump(mode="json") for s in sections}, sort_keys=True)


def stage_configs(params: Params) -> dict[str, str]:
    params = with_feature_kinds(params)  # once: a front-end fallback is said in one line, not once per stage
    return {name: stage_config(params, name) for name in STAGES}
