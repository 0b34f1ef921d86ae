"""Write a study's best full-fidelity config and its seeds' configs as config documents (for holdout runs).

Usage: ``python -m bench.evolve_best DB OUT_PREFIX`` → ``OUT_PREFIX.best.json`` (best COMPLETE trial so far) and
``OUT_PREFIX.<baseline>.json``. A study that was stopped early still has a best: its COMPLETE trials are all
full measurements (lower-fidelity ones end PRUNED).
"""

from __future__ import annotations

import json
import sys

import optuna
from optuna.trial import TrialState


def main(db: str, prefix: str) -> None:
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.value is not None]
    best = min(done, key=lambda t: (float(t.value), t.number))  # type: ignore[arg-type]
    picks = {"best": best} | {str(t.user_attrs["source"]).removeprefix("baseline:"): t for t in done
                              if str(t.user_attrs.get("source", "")).startswith("baseline:")}
    for name, trial in picks.items():
        with open(f"{prefix}.{name}.json", "w") as fh:
            json.dump(trial.user_attrs["config"], fh)
        print(name, trial.number, trial.value, trial.user_attrs.get("source"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
