"""The whole Kubeflow DAG through kfp.local on RAVDESS: wall time per run and per stage, and the
registry story — a short run registers (and, as the first, becomes champion), a worse run leaves
`champion` where it is, a better run moves it, and rollback restores the previous champion.

Each run is `affectflow pipeline run --local` in its own process (what a person types), in a fresh
workdir with its own MLflow store, so the registry starts empty. Stage times come from the run's
`last_run.json` (measured around each task, subprocess start-up included; cached tasks ~0 s).
Prints a table, writes JSON; asserts nothing about timings.

    .venv/bin/python benchmarks/pipeline.py                          # RAVDESS from ../shared/data
    .venv/bin/python benchmarks/pipeline.py --data-root demo_data    # any RAVDESS-layout folder
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHORT = {
    "features.kinds": "[egemaps]",
    "train.model": "egemaps_mlp",
    "train.epochs": "15",
    "train.patience": "15",
    "evaluate.bootstrap": "200",
}
"""The short configuration: eGeMAPS functionals and the MLP, a few epochs (minutes on 2 cores)."""
RUNS = (
    ("short", {}),
    ("worse", {"train.lr": "0.00001"}),
    ("better", {"train.epochs": "60", "train.patience": "60"}),
)
"""(name, overrides on top of SHORT): a learning rate too small to learn in 15 epochs; then 4x
the epochs. Whether each is worse/better is what the gate decides on the test split."""
STAGE_TASKS = ("resolve-params", "ingest", "validate", "features", "skip-augment", "skip-pretrain",
               "augment", "pretrain", "train", "evaluate", "register", "promote", "record-run-status")


def _sets(overrides: dict[str, str]) -> list[str]:
    return [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]


def _cli(args: list[str], env: dict[str, str], check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run([str(Path(sys.executable).parent / "affectflow"), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if check and res.returncode != 0:
        sys.stderr.write(res.stdout[-6000:] + res.stderr[-6000:])
        raise SystemExit(f"affectflow {' '.join(args[:3])} failed ({res.returncode})")
    return wall, res


def _champion(common: list[str], env: dict[str, str]) -> str | None:
    from affectflow.config import load_params
    from affectflow.tracking.registry import CHAMPION, Registry

    overrides = dict(common[i + 1].split("=", 1) for i in range(0, len(common), 2))
    params = load_params(REPO / "params.yaml", overrides)
    return Registry(params).alias_version(CHAMPION)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--workdir", type=Path, default=REPO / "artifacts" / "bench-pipeline")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pipeline.json")
    ap.add_argument("--keep", action="store_true", help="reuse the workdir (warm cache, existing registry)")
    a = ap.parse_args()

    if a.workdir.exists() and not a.keep:
        shutil.rmtree(a.workdir)
    a.workdir.mkdir(parents=True, exist_ok=True)
    common = _sets({
        "paths.workdir": str(a.workdir), "paths.data_root": a.data_root,
        "tracking.uri": f"sqlite:///{a.workdir / 'mlflow.db'}",
        "tracking.artifact_location": str(a.workdir / "mlartifacts"),
    })
    env = {**os.environ, "AFFECTFLOW_PROGRESS": "0", "RAY_DISABLE_USAGE_STATS": "1"}
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    rows: list[dict[str, Any]] = []
    for name, extra in RUNS:
        before = _champion(common, env)
        wall, _ = _cli(["pipeline", "run", "--local", *common, *_sets({**SHORT, **extra})], env)
        summary = json.loads((a.workdir / "kfp" / "last_run.json").read_text())
        reg = summary["register"] or {}
        rows.append({"run": name, "overrides": {**SHORT, **extra}, "wall_s": round(wall, 1),
                     "pipeline_s": summary["wall_s"], "tasks": summary["tasks"],
                     "uar": (summary["metrics"] or {}).get("uar"), "version": reg.get("version"),
                     "gate": (reg.get("gate") or {}).get("passed"), "reason": (reg.get("gate") or {}).get("reason"),
                     "champion_before": before, "champion_after": _champion(common, env)})
        print(f"{name}: {wall:.1f} s, UAR {rows[-1]['uar']}, v{rows[-1]['version']}, gate "
              f"{'passed' if rows[-1]['gate'] else 'failed'}, champion {before} -> {rows[-1]['champion_after']}",
              flush=True)

    before = _champion(common, env)
    wall, res = _cli(["registry", "rollback", *common, "--reason", "benchmark: restore the previous champion"],
                     env, check=False)
    rows.append({"run": "rollback", "wall_s": round(wall, 1), "champion_before": before,
                 "champion_after": _champion(common, env), "returncode": res.returncode,
                 "message": (res.stderr.strip().splitlines() or [""])[-1]})
    print(f"rollback: champion {before} -> {rows[-1]['champion_after']} {rows[-1]['message']}", flush=True)

    by = {r["run"]: r for r in rows}
    checks = {
        "short run ends with a registered version": by["short"]["version"] == "1",
        "first version becomes champion": by["short"]["champion_after"] == "1",
        "worse run leaves champion unchanged": (not by["worse"]["gate"]
                                                and by["worse"]["champion_after"] == by["worse"]["champion_before"]),
        "better run moves champion": (bool(by["better"]["gate"])
                                      and by["better"]["champion_after"] == by["better"]["version"]),
        "rollback restores the previous champion": by["rollback"]["champion_after"] == by["better"]["champion_before"],
    }
    _print_table(rows, checks)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"data_root": a.data_root, "cpus": os.cpu_count(), "runs": rows,
                                 "checks": checks}, indent=2, default=str) + "\n")
    print(f"written: {a.out}")


def _print_table(rows: list[dict[str, Any]], checks: dict[str, bool]) -> None:
    runs = [r for r in rows if "tasks" in r]
    head = f"{'task':<18}" + "".join(f"{r['run']:>12}" for r in runs)
    print("\nseconds per task (c = from cache)\n" + head)
    for task in STAGE_TASKS:
        if not any(task in r["tasks"] for r in runs):
            continue
        cells = []
        for r in runs:
            t = r["tasks"].get(task)
            cells.append(f"{'-':>12}" if t is None else f"{t['seconds']:>11.1f}{'c' if t['cached'] else ' '}")
        print(f"{task:<18}" + "".join(cells))
    print(f"{'pipeline (in-run)':<18}" + "".join(f"{r['pipeline_s']:>11.1f} " for r in runs))
    print(f"{'process wall':<18}" + "".join(f"{r['wall_s']:>11.1f} " for r in runs))
    print(f"{'test UAR':<18}" + "".join(f"{r['uar'] if r['uar'] is not None else '-':>12}" for r in runs))
    print(f"{'version / gate':<18}" + "".join(f"{'v' + str(r['version']) + (' pass' if r['gate'] else ' fail'):>12}"
                                             for r in runs))
    print(f"{'champion after':<18}" + "".join(f"{'v' + str(r['champion_after']):>12}" for r in rows))
    print()
    for what, ok in checks.items():
        print(f"[{'ok' if ok else 'NO'}] {what}")


if __name__ == "__main__":
    main()
