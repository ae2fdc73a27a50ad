"""`mlflow ui --app-name mm4ke`: MLflow's own server whose experiment links open on the runs,
with the sweep's objectives among the runs table's columns.

What MLflow 3.17's UI reads (its source, `mlflow/server/js/src`, minified in the installed
`server/js/build`):

- The experiment kind shown comes from the global workflow toggle whenever that toggle is enabled
  (`shouldEnableWorkflowTypeToggle`, hard-coded on), not from the experiment's tag
  `mlflow.experimentKind`; the toggle is the URL's `workflowType` parameter, else the browser's
  localStorage key `mlflow.workflowType_v1`, else "genai". So `#/experiments/ID` lands on the
  GenAI Overview, whatever the tag says.
- The runs table's visible columns are the experiment page's UI state `selectedColumns`
  (canonical keys such as ``metrics.`edit_score` ``), its open rows `runsExpanded` (run id →
  true). `useInitializeUIState` loads that state from localStorage under
  `MLflowLocalStorage-1.1-ExperimentPage-["ID"]-ReactComponentState` (`LocalStorageUtils`,
  persist key `JSON.stringify(experimentIds.sort())`) and merges it over MLflow's defaults
  (Source, Models, Dataset; every row closed); `usePersistExperimentPageViewState` writes the
  whole state back there on the first render and on every change.

This app serves MLflow's page with one script added before MLflow's: it stores
"machine_learning" as the workflow choice, and for every experiment that holds a sweep it stores
this package's view (`sweep_view`: the objectives, α and sparsity, the Pareto tag; the newest
sweep's run and its trials' runs open), each only where the browser has nothing stored yet. A
person's own choice is kept: once MLflow's page has shown an experiment, its key exists (a
click on the toggle or in the Columns menu is persisted there) and is never written again.
Nothing else of MLflow changes. The experiments are read when the page is served, so a sweep's
experiment created after the page was opened gets its view on the next load of the page.

Registered as the `mlflow.app` entry point `mm4ke` (pyproject.toml), which `mlflow ui --app-name`
looks up; `ui_command.ui_command` prints that invocation.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

from mlflow import MlflowClient
from mlflow.server import BACKEND_STORE_URI_ENV_VAR
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from mm4ke_ray.evaluate.scores import COMBINED, EDIT, GENERAL
from mm4ke_ray.schema import ALPHA, ROLE_SWEEP, ROLE_TRIAL, SPARSITY, Tag
from mm4ke_ray.tracking.pareto_artifacts import PARETO_TAG

WORKFLOW_KEY = "mlflow.workflowType_v1"  # useLocalStorage({key: "mlflow.workflowType", version: 1})
MACHINE_LEARNING = "machine_learning"
_KEY, _VALUE = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(MACHINE_LEARNING))  # stored as JSON
DEFAULT_WORKFLOW_SCRIPT = (
    f"<script>try{{if(localStorage.getItem({_KEY})===null)localStorage.setItem({_KEY},{_VALUE})}}"
    "catch(e){}</script>"
)


def column(kind: str, name: str) -> str:
    """A runs-table column as MLflow names it (`makeCanonicalSortKey`): kind.`name`."""
    return f"{kind}.`{name}`"


# What a person compares candidates by: the objectives (the sweep run's best combined score on
# its own, closed row), where the candidate sits (α, sparsity), whether it is on the front.
# MLflow's defaults Source (the script's path), Dataset (never logged here) and Models (mostly
# "-"; an export shows on its run's page) are left to the Columns menu: with Models, a 1600 px
# window with the assistant panel open showed general_score only after scrolling sideways.
SWEEP_COLUMNS = (
    *(column("metrics", m) for m in (COMBINED.name, EDIT.name, GENERAL.name, f"best_{COMBINED.name}")),
    column("params", ALPHA),
    column("params", SPARSITY),
    column("tags", PARETO_TAG),
)
VIEW_STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{ids}-ReactComponentState"
_MAX_OPEN_TRIALS = 500  # a larger sweep opens its own run only: its trials are a click away


def view_state_key(experiment_id: str) -> str:
    """The localStorage key of one experiment's page state in MLflow 3.17's UI."""
    return VIEW_STATE_KEY.format(ids=json.dumps([str(experiment_id)]))


def _runs(client: MlflowClient, experiment_ids: list[str], where: str, limit: int) -> list:
    return list(client.search_runs(experiment_ids, where, max_results=limit, order_by=["attributes.start_time DESC"]))


def sweep_view(client: MlflowClient) -> dict[str, dict]:
    """Experiment id → the page state this app proposes, for every experiment holding a sweep:
    `selectedColumns` (SWEEP_COLUMNS) and `runsExpanded` (the newest sweep's run and its trials'
    runs, so its candidates and their objectives show without a click)."""
    ids = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not ids:
        return {}
    newest: dict[str, str] = {}
    for run in _runs(client, ids, f"tags.`{Tag.ROLE}` = '{ROLE_SWEEP}'", 10000):
        newest.setdefault(run.info.experiment_id, run.info.run_id)
    views = {}
    for experiment_id, sweep in newest.items():
        trials = _runs(client, [experiment_id], f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}' AND "
                       f"tags.`{Tag.SWEEP_RUN_ID}` = '{sweep}'", _MAX_OPEN_TRIALS + 1)
        opened = [sweep, *(r.info.run_id for r in trials if len(trials) <= _MAX_OPEN_TRIALS)]
        views[experiment_id] = {"selectedColumns": list(SWEEP_COLUMNS), "runsExpanded": dict.fromkeys(opened, True)}
    return views


def defaults_script(views: dict[str, dict]) -> str:
    """The script stored before MLflow's: the workflow choice, then each experiment's view, each
    only where the browser has no value under its key."""
    states = {view_state_key(k): json.dumps(v, separators=(",", ":")) for k, v in views.items()}
    data = json.dumps(states, separators=(",", ":")).replace("<", "\\u003c")  # stays inside <script>
    views_part = (f"try{{var v={data};for(var k in v)if(localStorage.getItem(k)===null)localStorage.setItem(k,v[k])}}"
                  "catch(e){}" if views else "")
    return DEFAULT_WORKFLOW_SCRIPT.replace("</script>", views_part + "</script>")


def index_page(views: dict[str, dict] | None = None) -> str:
    """MLflow's index.html with the defaults script first in <head>."""
    html = Path(flask_app.static_folder, "index.html").read_text(encoding="utf-8")
    return html.replace("<head>", "<head>" + defaults_script(views or {}), 1)


@functools.cache
def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def _served_views() -> dict[str, dict]:
    """`sweep_view` of the store this server serves; none (MLflow's own defaults) if it cannot be read."""
    uri = os.environ.get(BACKEND_STORE_URI_ENV_VAR)
    if not uri:
        return {}
    try:
        return sweep_view(_client(uri))
    except Exception as exc:  # noqa: BLE001 - the page must open even when the store misbehaves
        warnings.warn(f"mm4ke: runs-table defaults not set ({exc})", stacklevel=2)
        return {}


async def _index(request: Request) -> HTMLResponse:
    return HTMLResponse(index_page(await run_in_threadpool(_served_views)))


# Before MLflow's catch-all mount of its Flask app at "/", which would serve the plain page.
app.router.routes.insert(0, Route("/", _index, methods=["GET"]))
