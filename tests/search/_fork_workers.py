"""K worker processes on one study, forked from one parent that loaded the model once.

``python _fork_workers.py URL STUDY K OUT_DIR``: creates and seeds the study from
``OUT_DIR/spec.json``, then forks K workers. Eight ``slimscout worker`` processes would spend most
of a test importing torch on two cores; forked after the imports, they start at once, each with its
own database connections (the storages are dropped at fork) and its own sampler seed. Each child
records the trials it claimed for measurement in ``OUT_DIR/claims-<k>.json`` (the test checks that
no trial was claimed twice) and exits 0, or 1 with a traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def main(url: str, name: str, workers: int, out: Path) -> int:
    import torch

    torch.set_num_threads(1)  # before any op: no OpenMP pool to inherit across fork
    import search.worker
    from search.context import Workbench
    from search.setup import seed_study
    from search.spec import StudySpec
    from search.study import create_study

    spec = StudySpec.from_dict(json.loads((out / "spec.json").read_text()))
    bench = Workbench()
    seed_study(create_study(url, name, spec), spec, bench)
    bench.evaluator(spec.model_id, spec.dataset, spec.split, spec.eval_tokens)
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            os._exit(_child(url, name, index, bench, out, search.worker))
        children.append(pid)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    return 1 if failed else 0


def _child(url: str, name: str, index: int, bench: object, out: Path, worker: object) -> int:
    claimed: list[int] = []
    try:
        measure = worker.measure_trial  # type: ignore[attr-defined]

        def recording(study: object, trial: object, *args: object) -> object:
            claimed.append(trial.number)  # type: ignore[attr-defined]
            return measure(study, trial, *args)

        worker.measure_trial = recording  # type: ignore[attr-defined]
        started = time.perf_counter()
        worker.work_on_study(url, name, bench, worker_index=index)  # type: ignore[attr-defined]
        (out / f"claims-{index}.json").write_text(json.dumps(
            {"pid": os.getpid(), "claimed": claimed, "seconds": time.perf_counter() - started}))
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])))
