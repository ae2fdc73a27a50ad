"""The embedded default: a tiny base model and a generated world of facts, built locally.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top;
demo/ builds the assets that the commands resolve `demo` to (`demo.resolve`).
"""
