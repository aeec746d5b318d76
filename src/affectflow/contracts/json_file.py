"""Reading a JSON artifact into its typed model: the one shape every JSON contract's reader shares.

Why: metrics.json (`contracts.evaluation`) and model.json (`contracts.model_folder`) had the same
read-decode-validate steps written twice; here they are once, so every JSON artifact's errors read
alike: a missing file says what is missing and how to make it, bytes that are not JSON and fields
of a wrong type or name are the artifact's own error class, naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

UNKNOWN_FIELD = "unknown field: "
"""Prefix of a validator's message about a field it knows by name but pydantic does not place
(an unknown section): the name is moved into the field's path."""

Model = TypeVar("Model", bound=BaseModel)


def read_json_file(path: str | Path, error: type[Exception], missing: str) -> Any:
    """The decoded content of `path`: `FileNotFoundError("<path>: <missing>")` when it is absent,
    `error("<path>: not valid JSON (...)")` when its bytes are not JSON text."""
    f = Path(path)
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{f}: not valid JSON ({e})") from None


def validation_message(err: ValidationError, where: str | Path) -> str:
    """`<where>: field 'a.b': <what is wrong>; ...`, one part per wrong field."""
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        if msg.startswith(UNKNOWN_FIELD):
            name, _, msg = msg.removeprefix(UNKNOWN_FIELD).partition(" ")
            loc.append(name)
        parts.append(f"field '{'.'.join(loc) or '(top level)'}': {msg}")
    return f"{where}: " + "; ".join(parts)


def parse_model(model: type[Model], data: Any, where: str | Path, error: type[Exception]) -> Model:
    """`data` validated as `model`; a wrong field is `error` naming `where` and the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(validation_message(e, where)) from None
