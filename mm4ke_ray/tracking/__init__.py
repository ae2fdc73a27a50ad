"""MLflow tracking: one parent run per sweep, a nested child run per merge candidate."""
