"""MLflow tracking: one parent run per sweep, a nested child run per merge candidate; the
registry, the Pareto artifacts and reading a sweep back. The only package that imports mlflow.

Flow: config → data → rsft → merge → evaluate → search → [tracking] → export, commands on top.
"""
