"""Search stage: Optuna studies over training settings, scored on the validation split."""
