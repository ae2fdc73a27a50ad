"""`mlflow ui --app-name mm4ke`: MLflow's own server whose experiment links open on the runs.

What MLflow 3.17's UI reads (its source, `mlflow/server/js/src`, minified in the installed
`server/js/build`): the experiment kind shown comes from the global workflow toggle whenever that
toggle is enabled (`shouldEnableWorkflowTypeToggle`, hard-coded on), not from the experiment's tag
`mlflow.experimentKind`; the toggle is the URL's `workflowType` parameter, else the browser's
localStorage key `mlflow.workflowType_v1`, else "genai". So `#/experiments/ID` lands on the GenAI
Overview, whatever the tag says. This app serves MLflow's page with one line added before MLflow's
script: set that key to "machine_learning" when the browser has no choice stored yet. A person's
own click on the toggle is kept (the key then exists); nothing else of MLflow changes.

Registered as the `mlflow.app` entry point `mm4ke` (pyproject.toml), which `mlflow ui --app-name`
looks up; `ui_command.ui_command` prints that invocation.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

WORKFLOW_KEY = "mlflow.workflowType_v1"  # useLocalStorage({key: "mlflow.workflowType", version: 1})
MACHINE_LEARNING = "machine_learning"
_KEY, _VALUE = json.dumps(WORKFLOW_KEY), json.dumps(json.dumps(MACHINE_LEARNING))  # stored as JSON
DEFAULT_WORKFLOW_SCRIPT = (
    f"<script>try{{if(localStorage.getItem({_KEY})===null)localStorage.setItem({_KEY},{_VALUE})}}"
    "catch(e){}</script>"
)


def index_page() -> str:
    """MLflow's index.html with the default-workflow line first in <head>."""
    html = Path(flask_app.static_folder, "index.html").read_text(encoding="utf-8")
    return html.replace("<head>", "<head>" + DEFAULT_WORKFLOW_SCRIPT, 1)


async def _index(request: Request) -> HTMLResponse:
    return HTMLResponse(index_page())


# Before MLflow's catch-all mount of its Flask app at "/", which would serve the plain page.
app.router.routes.insert(0, Route("/", _index, methods=["GET"]))
