"""Settings of the data sections: paths, audio, ingest (corpora), splits, validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from affectflow.config.base import Section


# --------------------------------------------------------------------------- paths & audio
class PathsConfig(Section):
    workdir: str = "artifacts"
    """Where every stage writes its outputs (local folder or s3:// prefix)."""
    data_root: str = "../shared/data"
    """Corpus roots that are relative resolve against this folder."""


class AudioConfig(Section):
    sample_rate: int = Field(16000, gt=0)
    min_duration_s: float = Field(0.3, ge=0)
    max_duration_s: float = Field(30.0, gt=0)
    min_speech_s: float = Field(0.25, ge=0)
    """Seconds of detected speech (Silero VAD, `affectflow.speech`) a clip needs to be ingested or
    given an emotion; below it the answer is "no speech". 0 turns the check off."""
    speech_threshold: float = Field(0.2, gt=0, lt=1)
    """Silero speech probability from which a 32 ms frame counts as speech. Below Silero's own 0.5:
    shouted speech scores low (RAVDESS strong-intensity clips); generated noise, tones and music
    stay under it (benchmarks/speech_check.py)."""


# --------------------------------------------------------------------------- ingest
class CorpusSpec(Section):
    name: str
    """Name stored in the manifest's `corpus` column (also the DANN domain name)."""
    adapter: Literal["ravdess", "emodb", "crema_d", "tess", "savee", "iemocap", "emovo", "csv"]
    root: str
    """Corpus folder (or, for `csv`, the manifest CSV file); relative to paths.data_root."""
    role: Literal["source", "target", "heldout"] = "source"
    """source: labelled training corpus; target: domain-adaptation corpus (DANN: its training
    speakers unlabelled, its test speakers scored); heldout: never trained on, every clip scored by
    `evaluate` (a corpus nobody tuned for)."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Per-corpus overrides of ingest.label_map (raw label -> class)."""


class IngestConfig(Section):
    corpora: list[CorpusSpec] = Field(default_factory=lambda: _default_study_corpora())
    """Several labelled corpora by default: the recognizer must hold up on recordings unlike any one."""
    classes: list[str] = Field(default_factory=lambda: ["angry", "happy", "neutral", "sad"])
    """The classes every default corpus has."""
    label_map: dict[str, str] = Field(default_factory=dict)
    """Raw (canonical) label -> class. Labels that are already classes map to themselves;
    anything else that is not mapped is dropped and counted in the summary."""
    on_bad_audio: Literal["fail", "skip"] = "fail"
    """A file that is not usable audio (truncated, corrupt, out of range): stop, or quarantine it."""
    on_no_speech: Literal["fail", "skip"] = "skip"
    """A clip with less than `audio.min_speech_s` of speech: quarantine it (named in the summary and
    a warning), or stop. Skip by default: in a labelled corpus it is most often the detector's miss
    (8 of the four corpora's 5,167 clips, benchmarks/speech_check.py), not a broken file."""
    workers: int = Field(2, ge=1)

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or not v:
            raise ValueError("classes must be a non-empty list of unique names")
        return v


class SplitsConfig(Section):
    n_folds: int = Field(4, ge=2)
    test_fold: int = Field(0, ge=0)
    test_speakers: list[str] = Field(default_factory=list)
    """If set, these speakers (as `corpus/speaker` or bare speaker ids) form the test split."""
    val_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction of the training speakers carved off for validation (0: none — only with
    `train.checkpoint: last`, which needs no validation speakers)."""
    source_test: bool = True
    """false: source corpora keep no test speakers (all train / val): the test set is the held-out
    corpora (role heldout), as in leave-one-corpus-out training."""
    seed: int = 13


class ValidationConfig(Section):
    min_examples_per_class_per_split: int = Field(1, ge=0)
    check_decode: bool = True
    """Open every file in the gate and read its last frames (catches truncated audio)."""
    duration_tolerance: float = Field(0.02, ge=0)
    """Relative gap allowed between a file's header duration and the manifest's (file changed since ingest)."""
    report_examples: int = Field(10, ge=1)
    """Offending rows (or groups) listed per failed check in the gate report."""
    fail_on_duplicate_audio: bool = False
    """Byte-identical clips in one split with one label only warn (RAVDESS ships such a pair);
    true fails the gate on any duplicate. Copies across splits or with different labels always fail."""


def _default_study_corpora() -> list[CorpusSpec]:
    return [CorpusSpec(name="ravdess", adapter="ravdess", root="ravdess"),
            CorpusSpec(name="emodb", adapter="emodb", root="emodb"),
            CorpusSpec(name="tess", adapter="tess", root="tess"),
            CorpusSpec(name="emovo", adapter="emovo", root="emovo")]
