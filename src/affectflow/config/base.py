"""The base of every settings section and the error a bad setting raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A problem in params.yaml or an override; the message names the file and the key."""


class Section(BaseModel):
    # strict: `epochs: yes` or `--set train.epochs=true` is an error naming the key, not 1 epoch.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)
