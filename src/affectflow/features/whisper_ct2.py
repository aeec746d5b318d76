"""A faster-whisper (CTranslate2) Whisper folder, converted once into the transformers layout.

Why convert instead of running `ctranslate2` directly: CTranslate2's Whisper encoder returns the
last layer only, and the last layer is the worst one for emotion (benchmarks/RESULTS.md, "Whisper
front-end"); the layer-weighted head and the middle-layer probe need every hidden state, which
transformers' `WhisperModel` gives. The conversion is exact (fp16 weights widened to fp32), and
`tests/unit/test_whisper.py` checks both give the same encoder output.

The CT2 `model.bin` is a flat binary of named tensors (ctranslate2/specs/model_spec.py,
`_serialize`): a version, the spec name and revision, then (name, shape, dtype id, bytes) per
variable and finally (alias, target) pairs. Names follow the converter's spec
(`encoder/layer_3/self_attention/linear_0/weight` = q, k, v fused), mapped here onto the
state-dict names of `transformers.WhisperModel`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

CT2_MODEL_FILE = "model.bin"
CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # DataType enum order; None = bfloat16
SUPPORTED_SPEC = "WhisperSpec"


class Ct2FormatError(ValueError):
    """A model.bin that is not a CTranslate2 Whisper model this reader understands; names file and field."""


def is_ct2_whisper(folder: Path) -> bool:
    """True when `folder` holds a CTranslate2 Whisper model.bin (read from its header only)."""
    path = folder / CT2_MODEL_FILE
    if not path.is_file():
        return False
    with path.open("rb") as f:
        try:
            _version, name = _read_header(f, path)
        except Ct2FormatError:
            return False
    return name == SUPPORTED_SPEC


def _read_string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n)[:-1].decode("utf-8")


def _read_header(f: BinaryIO, path: Path) -> tuple[int, str]:
    head = f.read(4)
    if len(head) != 4:
        raise Ct2FormatError(f"{path}: too short for a CTranslate2 model")
    (version,) = struct.unpack("<I", head)
    if not 5 <= version <= 6:
        raise Ct2FormatError(f"{path}: binary version {version} (this reader knows 5..6)")
    return version, _read_string(f)


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (aliases resolved) as numpy arrays."""
    out: dict[str, np.ndarray] = {}
    with path.open("rb") as f:
        _version, name = _read_header(f, path)
        if name != SUPPORTED_SPEC:
            raise Ct2FormatError(f"{path}: spec {name!r}, expected {SUPPORTED_SPEC!r}")
        f.read(4)  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        for _ in range(count):
            var = _read_string(f)
            (ndim,) = struct.unpack("<B", f.read(1))
            shape = struct.unpack(f"<{ndim}I", f.read(4 * ndim))
            (dtype_id,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise Ct2FormatError(f"{path}: truncated at variable {var!r}")
            if dtype_id >= len(CT2_DTYPES):
                raise Ct2FormatError(f"{path}: variable {var!r} has unknown dtype id {dtype_id}")
            dtype = CT2_DTYPES[dtype_id]
            if dtype is None:  # bfloat16: the high half of a float32
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype)
            out[var] = arr.reshape(shape)
        (n_alias,) = struct.unpack("<I", f.read(4))
        for _ in range(n_alias):
            alias, target = _read_string(f), _read_string(f)
            out[alias] = out[target]
    return out


def _layers(ct2: dict[str, np.ndarray], side: str) -> int:
    return len({k.split("/")[1] for k in ct2 if k.startswith(f"{side}/layer_") and k.split("/")[1][6:].isdigit()})


def _linear(ct2: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", ct2[f"{src}/weight"]
    if f"{src}/bias" in ct2:
        yield f"{dst}.bias", ct2[f"{src}/bias"]


def _norm(ct2: dict[str, np.ndarray], src: str, dst: str) -> Iterator[tuple[str, np.ndarray]]:
    yield f"{dst}.weight", ct2[f"{src}/gamma"]
    yield f"{dst}.bias", ct2[f"{src}/beta"]


def _attention(ct2: dict[str, np.ndarray], src: str, dst: str, fused: str) -> Iterator[tuple[str, np.ndarray]]:
    """CT2 fuses q/k/v (self-attention: linear_0 = qkv, linear_1 = out; cross-attention: linear_0 =
    q, linear_1 = kv, linear_2 = out); Whisper's k_proj has no bias (the fused one holds zeros)."""
    names = ["q_proj", "k_proj", "v_proj"]
    parts: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for i, group in enumerate([names] if fused == "qkv" else [names[:1], names[1:]]):
        w, b = ct2[f"{src}/linear_{i}/weight"], ct2.get(f"{src}/linear_{i}/bias")
        step = w.shape[0] // len(group)
        for j, proj in enumerate(group):
            parts.append((proj, w[j * step:(j + 1) * step], None if b is None else b[j * step:(j + 1) * step]))
    for proj, w, b in parts:
        yield f"{dst}.{proj}.weight", w
        if b is not None and proj != "k_proj":
            yield f"{dst}.{proj}.bias", b
    yield from _linear(ct2, f"{src}/linear_{1 if fused == 'qkv' else 2}", f"{dst}.out_proj")


def whisper_state_dict(ct2: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CT2 variables under `transformers.WhisperModel`'s state-dict names."""
    sd: dict[str, np.ndarray] = {}
    for side in ("encoder", "decoder"):
        if side == "encoder":
            for conv in ("conv1", "conv2"):
                sd.update(_linear(ct2, f"encoder/{conv}", f"encoder.{conv}"))
        else:
            sd["decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
        sd[f"{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        sd.update(_norm(ct2, f"{side}/layer_norm", f"{side}.layer_norm"))
        for i in range(_layers(ct2, side)):
            src, dst = f"{side}/layer_{i}", f"{side}.layers.{i}"
            sd.update(_attention(ct2, f"{src}/self_attention", f"{dst}.self_attn", "qkv"))
            sd.update(_norm(ct2, f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm"))
            if side == "decoder":
                sd.update(_attention(ct2, f"{src}/attention", f"{dst}.encoder_attn", "q+kv"))
                sd.update(_norm(ct2, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm"))
            sd.update(_linear(ct2, f"{src}/ffn/linear_0", f"{dst}.fc1"))
            sd.update(_linear(ct2, f"{src}/ffn/linear_1", f"{dst}.fc2"))
            sd.update(_norm(ct2, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm"))
    return sd


def whisper_config(ct2: dict[str, np.ndarray]) -> dict[str, Any]:
    """`transformers.WhisperConfig` arguments read off the tensors' shapes."""
    d_model = int(ct2["encoder/conv1/weight"].shape[0])
    return {
        "vocab_size": int(ct2["decoder/embeddings/weight"].shape[0]),
        "num_mel_bins": int(ct2["encoder/conv1/weight"].shape[1]),
        "d_model": d_model,
        "encoder_layers": _layers(ct2, "encoder"),
        "decoder_layers": _layers(ct2, "decoder"),
        "encoder_attention_heads": int(ct2["encoder/num_heads"]),
        "decoder_attention_heads": int(ct2["decoder/num_heads"]),
        "encoder_ffn_dim": int(ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(ct2["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(ct2["decoder/position_encodings/encodings"].shape[0]),
    }


def special_ids(folder: Path, vocab_size: int) -> dict[str, int]:
    """The decoder's special tokens, looked up in the folder's vocabulary (vocabulary.txt or .json);
    the last token when there is none (the encoder, all this project runs, does not use them)."""
    import json

    tokens: list[str] = []
    if (folder / "vocabulary.json").is_file():
        tokens = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
    elif (folder / "vocabulary.txt").is_file():
        tokens = (folder / "vocabulary.txt").read_text(encoding="utf-8").splitlines()

    def find(token: str) -> int:
        return tokens.index(token) if token in tokens else vocab_size - 1

    end = find("<|endoftext|>")
    return {"pad_token_id": end, "bos_token_id": end, "eos_token_id": end,
            "decoder_start_token_id": find("<|startoftranscript|>")}


def content_hash(folder: Path) -> str:
    """sha256 of the folder's model.bin (names the converted copy in the cache)."""
    h = hashlib.sha256()
    with (folder / CT2_MODEL_FILE).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def convert(folder: Path, target: Path) -> Path:
    """Write `target` (atomically): a transformers Whisper folder (config.json, model.safetensors,
    preprocessor_config.json) holding the weights of the CTranslate2 model in `folder`."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from affectflow.storage import atomic_dir

    ct2 = read_ct2(folder / CT2_MODEL_FILE)
    try:
        args = whisper_config(ct2)
        cfg = WhisperConfig(**args, **special_ids(folder, args["vocab_size"]))
        sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in whisper_state_dict(ct2).items()}
    except KeyError as e:
        raise Ct2FormatError(f"{folder / CT2_MODEL_FILE}: variable {e} missing (not a Whisper model?)") from None
    model = WhisperModel(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise Ct2FormatError(f"{folder / CT2_MODEL_FILE}: cannot map onto WhisperModel (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=cfg.num_mel_bins).save_pretrained(tmp)
    return target
