"""Ray: Tune + Optuna over R-SFT trials, the merge-eval actor pool, the sweep driver; the only
package that imports ray.

Flow: config → data → rsft → merge → evaluate → [search] → tracking → export, commands on top.
"""
