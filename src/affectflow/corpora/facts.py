"""What each corpus adapter's recordings are: language and kind of speech (the model card's
"languages covered" and "acted" limits). One row per adapter of `affectflow.corpora.ADAPTERS`
(a unit test keeps them in step); a `csv` corpus is whatever its owner says, so it has no row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CorpusFacts:
    language: str
    speech: str
    """acted / elicited / natural, and how (read sentences, improvised dialogue)."""


FACTS: dict[str, CorpusFacts] = {
    "ravdess": CorpusFacts("English (North American)", "acted: 24 actors, two fixed sentences, normal and strong intensity"),
    "emodb": CorpusFacts("German", "acted: 10 actors, ten fixed sentences"),
    "crema_d": CorpusFacts("English (US)", "acted: 91 actors, twelve fixed sentences"),
    "tess": CorpusFacts("English (Canadian)", "acted: 2 female speakers, carrier phrase + word"),
    "savee": CorpusFacts("English (British)", "acted: 4 male speakers, read sentences"),
    "iemocap": CorpusFacts("English (US)", "acted dyadic sessions: scripted and improvised"),
    "emovo": CorpusFacts("Italian", "acted: 6 actors, fourteen fixed sentences"),
}


def facts_for(corpus: str) -> CorpusFacts | None:
    """The row of a corpus named like its adapter (the usual case); None for any other name."""
    return FACTS.get(corpus)
