"""Stage 2 — features: manifest clips -> the kinds asked for, in the sharded content-addressed store.

What is computed: `features.kinds` as this stage is handed it — the kinds the enabled stages and the
configured model read plus any extra ones (`affectflow.stages.feature_kinds`, applied before the
stage's settings are handed out), so a run computes only what it uses.

The work is cut into shards (`features.shards`, default one per `SHARD_CLIPS` new clips): the clips
no shard holds yet, duration-sorted and dealt round-robin so every shard gets the same mix. The same
code runs the whole plan in this process (a local run) or one shard of it (`shard=(i, n)`: one task
of the cluster's `ParallelFor`, whose gather task is a plain run reusing the tasks' shards).

Inside a run: worker processes (`features.workers`) take chunks of similar-length clips, shard after
shard: decode + down-mix + resample each clip once (`affectflow.audio.load`), run openSMILE on that
signal for the missing openSMILE kinds, and log-mel where `features.logmel_in` says:
  * main (auto on CUDA): in the main process, on batches of the waveforms the workers send back,
    while the workers keep decoding — one process feeds the GPU;
  * workers (auto on CPU): inside the worker that decoded the chunk (one torch thread each), so
    decode and compute of different chunks overlap across processes.
The `ssl` encoder runs first, in the main process (one lane feeding a GPU; on the CPU,
`features.workers` lanes: threads sharing one encoder, one torch thread each on two cores).
The arrays come back to the main process, which writes a shard (one `.npz` + record per kind) as
soon as its last clip is in; a killed run leaves whole shards and no trusted half one, and the next
run computes only the clips no complete shard holds.

Trust, but check: a clip is decoded from bytes read once and hashed, and a file whose sha256 is not
the manifest's any more (cut, re-encoded or replaced after ingest) stops the stage with an error
naming it, so no array is ever stored under a content key that is not its audio's; a non-finite
array stops it naming the audio file; a shard whose bytes do not match its record is named and
computed again.

Warm cache: the shards' records (clip sha256 -> shape) are read and each shard's hash checked; a
warm re-run opens no audio and costs a small fraction of a cold one.

Modules: `stage` (the run: compute the plan's shards, write the index), `shards` (the plan: what the
store and `features.previous` lack, dealt into shards), `worker` (what a worker process computes).
"""

from __future__ import annotations

from affectflow.features.keys import feature_keys
from affectflow.stages.features.shards import (
    SHARD_CLIPS,
    SMILE_CHUNK,
    FeaturesError,
    plan,
    shard_count,
    shards_to_compute,
)
from affectflow.stages.features.stage import FeaturesResult, extract_features, run

__all__ = ["SHARD_CLIPS", "SMILE_CHUNK", "FeaturesError", "FeaturesResult", "extract_features", "feature_keys", "plan", "run", "shard_count", "shards_to_compute"]
