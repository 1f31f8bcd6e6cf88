"""The model registry and lifecycle: push, verify, optimize, promote, roll back, canary, shadow."""
