"""Orchestration around the core package: DVC stages, Ray Train fan-out, MLflow tracking.

Nothing in ``skrd4ad/`` imports this package; it imports Ray, MLflow and DVC lazily.
"""
