"""Search stage: Optuna studies over training settings, scored on the validation split."""

import csv

from tunelab.rundir import RunDir


def read_trials(run_dir: RunDir) -> list[dict[str, str]]:
    """Rows of search/trials.csv, best first; empty when no search ran."""
    path = run_dir.search / "trials.csv"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
