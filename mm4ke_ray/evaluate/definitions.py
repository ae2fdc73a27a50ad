"""The rules that turn per-item scores into reported edit numbers, named once (no heavy imports) so
every run records them (MLflow params, JSON, model card) and the sweep fingerprint changes with them.

Bump `EDIT_DEFINITIONS` whenever a rule changes numbers without a config field to show it: sweeps
of different definitions then never compare silently (`--warm-start` names the field).
"""

from __future__ import annotations

# Portability and locality (both families): per record the mean of its per-kind means, then the
# mean over records, as KnowEdit's runner computes them (`metric_rows.record_score`).
AGGREGATION = "record: mean of its per-kind means; overall: mean over records (KnowEdit)"

# 1: items pooled per record; generation cut at the target's tokens + 4; chat fluency ran past
#    the end of turn.
# 2 (issue 23): AGGREGATION above; generated answers under WILD's stop rules and budget (their
#    settings are evaluation.generation_*); chat fluency stops at the end of the assistant's turn.
EDIT_DEFINITIONS = "2"

# Generated answers: new tokens an answer may take (WILD generates up to 512 and cuts at the stop;
# a short answer stops long before either).
DEFAULT_MAX_NEW_TOKENS = 64

