"""Conveniences for model families over the same core (imported on demand: ``rlhook.adapters.language``)."""
