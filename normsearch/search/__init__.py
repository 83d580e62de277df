"""The search: Ray Tune trials sampled by an Optuna study on disk (the only package that imports Ray)."""
