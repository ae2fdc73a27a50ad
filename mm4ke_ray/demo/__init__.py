"""The embedded default: a tiny base model and a generated world of facts, built locally."""
