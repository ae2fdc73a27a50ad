"""A local Ray that listens on the loopback interface only.

On Linux a plain `ray.init()` makes the machine's routable IP the node IP, and Ray's servers
(GCS, raylet, object manager, core workers) bind to the node IP or to every interface; the
dashboard agent, runtime-env agent and metrics exporters follow. Token authentication guards
them, but the ports are still open to the network. Ray's single-machine mode, its default on
macOS and Windows, makes 127.0.0.1 the node IP, and then every server binds to it. It is the
environment variable RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which

- the processes `ray.init` starts (GCS, raylet, and through it agents and workers) inherit, and
- this driver reads once, when Ray is imported (`ray_constants.ENABLE_RAY_CLUSTER`), so the
  constant is set for the duration of `ray.init` as well.

The dashboard agent's HTTP server listens on a fixed port (52365) that `ray.init` offers no
argument for; a second local Ray on the machine (two sweeps at once) would find it taken, and its
agent would come up without its HTTP service. `ray.init` builds its `RayParams` through the module
attribute `ray._private.parameter.RayParams`, so within the block that attribute is a subclass whose
agent port defaults to 0: the agent binds a free port and records it in the session folder.

All three are restored afterwards: a later `ray start` or cluster connection made from this process
keeps Ray's own defaults. Single-machine mode refuses other nodes, which a local sweep never has;
a cluster (`--address`, `ray job submit`) is not started here and keeps its own settings.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Prometheus exporters of the autoscaler monitor and the dashboard: fixed ports (44217, 44227)
# by default, so a second local Ray on the machine could not bind them. Each local Ray gets free ones.
METRIC_PORT_ENVS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_free_agent_port(ray_params: type) -> type:
    """`RayParams` whose dashboard agent listens on a port the OS picks unless one is given."""

    class FreeAgentPortRayParams(ray_params):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    return FreeAgentPortRayParams


@contextmanager
def loopback_only() -> Iterator[None]:
    """Within this block, a `ray.init()` that starts a local Ray binds it to 127.0.0.1, with
    ports of its own where Ray's defaults are fixed."""
    from ray._private import parameter, ray_constants

    env = {SINGLE_MACHINE_ENV: "0", **{name: str(_free_loopback_port()) for name in METRIC_PORT_ENVS}}
    before_env = {name: os.environ.get(name) for name in env}
    before_flag, before_params = ray_constants.ENABLE_RAY_CLUSTER, parameter.RayParams
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    parameter.RayParams = _with_free_agent_port(before_params)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        parameter.RayParams = before_params
        for name, value in before_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Ray gives its raylet a fixed 30 s to register with the GCS (ray/_private/node.py); on a busy
# 2-core machine (CI, a laptop running other jobs) that start can miss it once and succeed next time.
START_ATTEMPTS = 2
_START_TIMEOUT = "timed out during startup"


def init_local_ray(**kwargs) -> None:
    """`ray.init(**kwargs)` starting a local Ray whose every listening socket is on 127.0.0.1."""
    import ray

    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            with loopback_only():
                ray.init(**kwargs)
            return
        except Exception as error:  # Ray raises a bare Exception for this one
            if _START_TIMEOUT not in str(error) or attempt == START_ATTEMPTS:
                raise
            ray.shutdown()  # the processes of the failed start
