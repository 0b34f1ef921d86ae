"""Search: budget-exact search spaces, the Optuna study, workers that measure, and the local runner."""
