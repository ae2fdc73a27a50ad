"""The cluster path: cluster/ configs, storage_path, resource planning, and real Ray nodes.

The two Ray tests start their own nodes with `ray start --block` in new process groups, each
with its own temp dir and ports, and stop exactly the processes they started (never `ray stop`,
which would stop every Ray on the machine). Token authentication is on, as Ray 2.60's default.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
VENV_BIN = Path(sys.executable).parent
DEMO = "search_spaces/demo.yaml"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- cluster launcher


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_rays_schema(name):
    import ray
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _load(CLUSTER / name)
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating
    validate_config(config)

    # The validator is strict: the same file with a misspelt key fails.
    typo = copy.deepcopy(raw)
    typo["max_worker"] = typo.pop("max_workers")
    with pytest.raises(ValidationError, match="max_worker"):
        validate_config(prepare_config(typo))

    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # no trial/actor on the head
    gpu = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu and any(t.get("min_workers", 0) >= 1 for t in gpu.values()), (
        "no GPU workers at start"
    )
    assert any(t["resources"].get("mm4ke_eval") for t in gpu.values()), (
        "no dedicated evaluation type"
    )
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard/job API must not be public"
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert "RAY_AUTH_MODE=token" in " ".join(cmds)
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("mm4ke-ray[sweep]" in c for c in config["setup_commands"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


# --------------------------------------------------------------------------- KubeRay


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _check_raycluster_spec(spec: dict) -> None:
    """The fields KubeRay's RayCluster CRD requires, and what this project relies on."""
    import ray

    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"]["num-cpus"] == "0"
    assert head["serviceType"] == "ClusterIP"  # not exposed outside the cluster
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in [head, *groups]:
        for c in _containers(group):
            assert c["name"] and c["image"], group
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
        for c in _containers(g):
            limits = c["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert limits == c["resources"]["requests"]  # guaranteed QoS: no eviction mid-trial
    custom = [
        json.loads(json.loads(g["rayStartParams"]["resources"]))
        for g in groups
        if "resources" in g["rayStartParams"]
    ]
    assert {"mm4ke_eval": 1} in custom


def test_kuberay_manifests_carry_required_fields():
    import ray

    from mm4ke_ray.commands import sweep as sweep_cmd
    from mm4ke_ray.config import load_config

    # The image the manifests run: Ray's image at the installed Ray version, plus this project.
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in dockerfile
    assert 'pip install --no-cache-dir -e ".[sweep]"' in dockerfile

    cluster = _load(CLUSTER / "kuberay" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    _check_raycluster_spec(cluster["spec"])
    broken = copy.deepcopy(cluster["spec"])
    del broken["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
    with pytest.raises(KeyError):
        _check_raycluster_spec(broken)  # the check fails on a manifest KubeRay would reject

    job = _load(CLUSTER / "kuberay" / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["rayClusterSpec"] == cluster["spec"], "rayjob.yaml drifted from raycluster.yaml"
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    yaml.safe_load(spec["runtimeEnvYAML"])

    # The entrypoint is a real `mm4ke-ray sweep` command line on the paper's config.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["mm4ke-ray", "sweep"]
    import argparse

    parser = argparse.ArgumentParser()
    sweep_cmd.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    in_image = "/home/ray/mm4ke-ray/"
    assert args.config.startswith(in_image)
    config = load_config(
        REPO / args.config.removeprefix(in_image), sweep_cmd.parse_overrides(args.set)
    )
    assert config.name == "zsre-qwen2.5-7b" and config.resources.rsft_gpus == 1
    assert config.storage_path.startswith("s3://")

    # The MLflow server the entrypoint points at accepts that host name.
    deployment, service = list(
        yaml.safe_load_all((CLUSTER / "kuberay" / "mlflow.yaml").read_text())
    )
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    host = config.tracking.uri.removeprefix("http://")
    assert host.split(".")[0] == service["metadata"]["name"]
    command = " ".join(deployment["spec"]["template"]["spec"]["containers"][0]["args"])
    assert host in command and "--backend-store-uri" in command


def test_runtime_env_is_accepted_by_ray():
    from ray.runtime_env import RuntimeEnv

    raw = _load(CLUSTER / "runtime_env.yaml")
    env = RuntimeEnv(**raw)
    packages = env["pip"]["packages"]
    assert packages == ["${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}[sweep]"]
    assert "sweep" in _load_pyproject()["project"]["optional-dependencies"]
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert {".venv/", ".git/", "runs/"} <= set(raw["excludes"])


def _load_pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())


# --------------------------------------------------------------------------- storage_path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3://bucket/sweeps/", "s3://bucket/sweeps"),
        (
            "S3://bucket/a?endpoint_override=minio:9000",
            "s3://bucket/a?endpoint_override=minio:9000",
        ),
        ("gs://bucket/x", "gs://bucket/x"),
        ("file:///mnt/nfs/sweeps", "/mnt/nfs/sweeps"),
    ],
)
def test_storage_uris_normalize(value, expected):
    from mm4ke_ray.storage import normalize_storage_path

    assert normalize_storage_path(value) == expected


def test_storage_local_folder_becomes_absolute(tmp_path, monkeypatch):
    from mm4ke_ray.storage import normalize_storage_path, probe_storage

    monkeypatch.chdir(tmp_path)
    path = normalize_storage_path("runs/ray")
    assert path == str(tmp_path / "runs" / "ray")
    probe_storage(path)  # creates it and leaves no probe file behind
    assert Path(path).is_dir() and not list(Path(path).iterdir())


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("gcs://bucket/x", ["gcs://", "gs://"]),
        ("hdfs://nn/x", ["hdfs://", "s3://"]),
        ("file://runs/ray", ["three slashes"]),
        ("s3://", ["bucket"]),
        ("  ", ["empty"]),
    ],
)
def test_storage_bad_values_name_the_field_and_fix(value, words):
    from mm4ke_ray.errors import UserError
    from mm4ke_ray.storage import normalize_storage_path, storage_problem

    assert storage_problem(value).startswith("storage_path:")
    with pytest.raises(UserError) as err:
        normalize_storage_path(value)
    for w in words:
        assert w in str(err.value)


def test_storage_probe_reports_unwritable(tmp_path):
    from mm4ke_ray.errors import UserError
    from mm4ke_ray.storage import local_storage_warning, probe_storage

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="storage_path: cannot write"):
        probe_storage(str(blocker / "sub"))
    assert local_storage_warning("/data/ray", 1) is None
    assert local_storage_warning("s3://b/p", 4) is None
    assert "NFS" in local_storage_warning("/data/ray", 2)


# --------------------------------------------------------------------------- resource plan


def _plan(cluster, candidates=1, **res):
    from mm4ke_ray.config import ResourcesConfig
    from mm4ke_ray.search.resources import plan_resources

    return plan_resources(ResourcesConfig(**res), cluster, candidates)


def test_plan_laptop_pairs_one_worker_with_one_actor():
    plan = _plan({"CPU": 2.0}, candidates=3)
    assert (plan.actors, plan.rsft_slots, plan.max_concurrent, plan.pipelined_concurrency) == (
        1,
        1,
        1,
        2,
    )


def test_plan_gpu_node_splits_gpus_and_checks_cpus():
    gpu = {"rsft_gpus": 1, "rsft_cpus": 4, "eval_gpus": 1, "eval_cpus": 4}
    assert _plan({"CPU": 96.0, "GPU": 8.0}, 7, **gpu).actors == 4
    # CPUs bind before GPUs: with 12 CPUs, one worker + actor pair (4 + 4), then one more worker.
    plan = _plan({"CPU": 12.0, "GPU": 8.0}, 7, **gpu)
    assert (plan.actors, plan.rsft_slots) == (1, 2)


def test_plan_dedicated_eval_nodes():
    res = {
        "rsft_gpus": 1,
        "rsft_cpus": 4,
        "eval_gpus": 1,
        "eval_cpus": 4,
        "eval_resource": "mm4ke_eval",
    }
    # 4 a100 nodes (32 GPUs) + 16 one-GPU eval nodes: every eval GPU gets an actor, all 32 train.
    plan = _plan({"CPU": 4 * 96.0 + 16 * 8, "GPU": 48.0, "mm4ke_eval": 16.0}, 7, **res)
    assert (plan.actors, plan.rsft_slots, plan.max_concurrent) == (16, 32, 32)
    assert plan.pipelined_concurrency == 32 + 3  # ceil(16 actors / 7 candidates)


def test_plan_refuses_what_cannot_run():
    from mm4ke_ray.errors import UserError

    with pytest.raises(UserError, match="resources.eval_resource: .*'evalnode'"):
        _plan({"CPU": 4.0}, eval_resource="evalnode")
    with pytest.raises(UserError, match=r"cannot run 1 merge-eval actor\(s\)"):
        _plan({"CPU": 1.0})
    with pytest.raises(UserError, match="GPU=1"):
        _plan({"CPU": 8.0, "GPU": 1.0}, rsft_gpus=1, eval_gpus=1)
    assert _plan({"CPU": 2.0}, max_concurrent=5).max_concurrent == 2  # slots + actors at most


_TRIAL_WAITS_ON_ALL_CPUS = """
import shutil, sys, tempfile
import ray
from ray import tune
from mm4ke_ray.search.resources import TRIAL_RESOURCES

temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)

@ray.remote(num_cpus=2)
def every_cpu():
    return "ran"

def trial(config):  # like a sweep trial: it only waits on work that needs the whole machine
    tune.report({"v": ray.get(every_cpu.options(scheduling_strategy="DEFAULT").remote(), timeout=15)})

grid = tune.Tuner(tune.with_resources(trial, TRIAL_RESOURCES),
                  run_config=tune.RunConfig(storage_path=temp + "/tune", verbose=0)).fit()
print("RESULT", grid[0].metrics.get("v") if not grid[0].error else "error")
ray.shutdown()
shutil.rmtree(temp, ignore_errors=True)
"""


@pytest.mark.ray
@pytest.mark.slow
def test_trial_resources_leave_every_cpu_to_workers():
    # The sweep's trials reserve TRIAL_RESOURCES: a trial must be able to wait on work that needs
    # every CPU (with a {"CPU": 0.01} sliver this 2-CPU task would wait forever).
    out = subprocess.run(
        [sys.executable, "-c", _TRIAL_WAITS_ON_ALL_CPUS],
        env={**os.environ, "RAY_ADDRESS": "", "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = next((ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("RESULT")), out.stderr[-2000:])
    assert result == "ran", result


# --------------------------------------------------------------------------- real Ray nodes

_RAY_PORT_FLAGS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _worker_port_range(width: int = 60) -> tuple[int, int]:
    """A block of free ports for one node's worker processes (not Ray's shared default range)."""
    import random

    for _ in range(50):
        start = random.randrange(20000, 30000)
        try:
            for p in range(start, start + width):
                with socket.socket() as s:
                    s.bind(("", p))
            return start, start + width - 1
        except OSError:
            continue
    raise RuntimeError("no free port block")


def _ray_env(loopback_only: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # the job entrypoint finds mm4ke-ray
        RAY_AUTH_MODE="token",
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        # Fixed by default (44217/44227): give this cluster its own.
        AUTOSCALER_METRIC_PORT=str(_free_port()),
        DASHBOARD_METRIC_PORT=str(_free_port()),
    )
    if loopback_only:
        # Ray's single-machine mode (its macOS default): the node IP is 127.0.0.1 and every
        # server binds to it. On Linux, `--node-ip-address=127.0.0.1` alone is rewritten to the
        # routable IP; single-machine mode refuses other nodes, so the 2-node test omits it.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return env


@dataclass
class RayNode:
    """One `ray start --block` process group we started, and how to stop exactly it."""

    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    env: dict
    ports: dict = field(default_factory=dict)

    def processes(self):
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        """SIGTERM the group and every descendant (workers may sit in groups of their own), then
        SIGKILL what is left after 3 s; assert none of them (gcs_server, raylet, dashboard,
        workers) survives."""
        import psutil

        procs = self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)  # the job's sweep is over: nothing to flush
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(alive, timeout=15)
        self.proc.wait(timeout=15)
        survivors = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not survivors, f"orphaned Ray processes: {survivors}"
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # session logs; failures quote the job log

    def wait_started(self, timeout: float = 300) -> None:  # a loaded 2-core CI machine took over 120 s
        deadline = time.time() + timeout
        while time.time() < deadline:
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(
            f"ray start did not come up:\n{self.log.read_text(errors='replace')[-3000:]}"
        )


def _start_node(args: list[str], env: dict, num_cpus: int, label: str) -> RayNode:
    """`ray start`, tried twice: Ray gives a new node a fixed 30 s to register with its GCS
    (ray/_private/node.py), which a 2-core machine under a benchmark's load can miss."""
    try:
        return _start_node_once(args, env, num_cpus, label)
    except RuntimeError as exc:
        if "timed out during startup" not in str(exc):
            raise
        return _start_node_once(args, env, num_cpus, label)


def _start_node_once(args: list[str], env: dict, num_cpus: int, label: str) -> RayNode:
    # Short temp dir: Ray's Unix socket paths must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix=f"rc{label}", dir="/tmp"))
    ports = {flag: _free_port() for flag in _RAY_PORT_FLAGS}
    low, high = _worker_port_range()
    cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--block",
        f"--temp-dir={temp}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        f"--min-worker-port={low}",
        f"--max-worker-port={high}",
        *[f"--{k}={v}" for k, v in ports.items()],
        *args,
    ]
    log = temp / "ray-start.log"
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    node = RayNode(proc, temp, log, env, ports)
    try:
        node.wait_started()
    except BaseException:
        node.stop()
        raise
    return node


def start_head(num_cpus: int, loopback_only: bool) -> tuple[RayNode, str, str]:
    """A head node; returns it, its GCS address and its job API (dashboard) URL on 127.0.0.1."""
    env = _ray_env(loopback_only)
    gcs_port, dash_port = _free_port(), _free_port()
    args = [
        "--head",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        f"--ray-client-server-port={_free_port()}",
        "--include-dashboard=true",
    ]
    if loopback_only:
        args.append("--node-ip-address=127.0.0.1")
    node = _start_node(args, env, num_cpus, "h")
    ip = (
        "127.0.0.1"
        if loopback_only
        else _ray_call(env, "print(ray._private.services.get_node_ip_address())")
    )
    return node, f"{ip}:{gcs_port}", f"http://127.0.0.1:{dash_port}"


def _ray_call(env: dict, code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", f"import ray, ray._private.services\n{code}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip()


def _ray_cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _state(env: dict, api: str) -> dict:
    """Nodes, actors and tasks from Ray's state API (a subprocess: token auth via env)."""
    code = f"""
import dataclasses, json
from ray.util.state import list_actors, list_nodes, list_tasks
kw = dict(address={api!r}, limit=10000, raise_on_missing_output=False, detail=True)
out = {{name: [dataclasses.asdict(x) for x in fn(**kw)]
       for name, fn in (("nodes", list_nodes), ("actors", list_actors), ("tasks", list_tasks))}}
print(json.dumps(out, default=str))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _submit_and_wait(
    env: dict, api: str, gcs: str, workdir: Path, argv: list[str], timeout: float
) -> str:
    """`ray job submit --working-dir`, then wait for the job's terminal status."""
    job_id = f"mm4ke-test-{int(time.time())}"
    sub = _ray_cli(
        env,
        "job",
        "submit",
        "--address",
        api,
        "--working-dir",
        str(workdir),
        "--submission-id",
        job_id,
        "--no-wait",
        "--",
        *argv,
    )
    assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
    # The CLI's status output is prose; the SDK gives the JobStatus value.
    poll = (
        "import sys\nfrom ray.job_submission import JobSubmissionClient\n"
        "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    deadline, status = time.time() + timeout, "?"
    while time.time() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", poll, api, job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        status = (
            out.stdout.strip().splitlines()[-1]
            if out.returncode == 0 and out.stdout.strip()
            else "?"
        )
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(10)
    cluster = ""
    if status != "SUCCEEDED":
        # E.g. a placement group that can never be placed: `ray status` shows the pending demand.
        cluster = _ray_cli(env, "status", "--address", gcs).stdout[-2500:]
        _ray_cli(env, "job", "stop", "--address", api, job_id)
    logs = _ray_cli(env, "job", "logs", "--address", api, job_id).stdout
    assert status == "SUCCEEDED", f"job {job_id}: {status}\n{cluster}\n{logs[-6000:]}"
    return logs


def _repo_copy(dest: Path) -> Path:
    """What a user uploads with `--working-dir .`: the package, configs, project files."""
    for name in ("mm4ke_ray", "search_spaces", "cluster"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    return dest


def _sweep_overrides(tmp: Path) -> list[str]:
    return [
        "--set",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        "--set",
        f"tracking.artifact_location={tmp}/mlart",
        "--set",
        f"storage_path={tmp}/ray-results",
    ]


def _mlflow_sweep(tmp: Path, experiment: str) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("mm4ke.role") == "sweep"]
    assert len(parents) == 1
    # The candidate runs, at any depth (the base under the parent, the others under their trial runs).
    children = [r for r in runs if r.data.tags.get("mm4ke.sweep_run_id") == parents[0].info.run_id
                and r.data.tags.get("mm4ke.role") == "candidate"]
    return parents[0], children


def _loopback_listeners(node: RayNode) -> set[str]:
    import psutil

    ips = set()
    for p in node.processes():
        try:
            ips |= {
                c.laddr.ip for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
            }
        except psutil.NoSuchProcess:
            pass
    return ips


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture
def ray_nodes():
    """Nodes a test starts; stopped afterwards even if the run is killed with SIGTERM (CI's
    `timeout`), since our nodes live in their own sessions and would outlive pytest."""
    nodes: list[RayNode] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield nodes
    finally:
        try:
            for node in reversed(nodes):
                node.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_demo_sweep(tmp_path, ray_nodes):
    head, gcs, api = start_head(num_cpus=2, loopback_only=True)
    ray_nodes.append(head)
    listening = _loopback_listeners(head)
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening

    workdir = _repo_copy(tmp_path / "repo")
    logs = _submit_and_wait(
        head.env,
        api,
        gcs,
        workdir,
        ["mm4ke-ray", "sweep", DEMO, "--smoke-test", *_sweep_overrides(tmp_path)],
        timeout=900,
    )
    state = _state(head.env, api)

    assert "Pareto front of demo" in logs
    parent, children = _mlflow_sweep(tmp_path, "mm4ke-ray-demo")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "demo"
    kinds = [c.data.tags.get("mm4ke.kind") for c in children]
    assert kinds.count("base") == 1 and kinds.count("sampled") == 4  # --smoke-test: 4 trials
    assert (
        len(
            {
                c.data.tags["mm4ke.trial_id"]
                for c in children
                if c.data.tags.get("mm4ke.kind") != "base"
            }
        )
        == 4
    )
    assert all(c.info.status == "FINISHED" for c in children)
    assert (tmp_path / "ray-results" / "demo").is_dir()  # Tune's storage where the config said
    # It ran on this cluster: its merge-eval actor is in this head's records.
    assert any(a["class_name"] == "MergeEvalActor" for a in state["actors"])


@pytest.mark.ray
@pytest.mark.slow
def test_second_node_hosts_the_merge_eval_actors(tmp_path, ray_nodes):
    # Head: the driver, trials and R-SFT (2 CPUs). Second node: 1 CPU + `evalnode`, which
    # resources.eval_resource makes every merge-eval actor require.
    head, gcs, api = start_head(num_cpus=2, loopback_only=False)
    ray_nodes.append(head)
    ray_nodes.append(
        _start_node([f"--address={gcs}", '--resources={"evalnode": 1}'], head.env, 1, "w")
    )
    workdir = _repo_copy(tmp_path / "repo")
    _submit_and_wait(
        head.env,
        api,
        gcs,
        workdir,
        [
            "mm4ke-ray",
            "sweep",
            DEMO,
            "--smoke-test",
            "--num-trials",
            "2",
            "--set",
            "resources.eval_resource=evalnode",
            "--set",
            "search.rsft.runner=train",  # on a cluster: one Ray Train worker per R-SFT run
            *_sweep_overrides(tmp_path),
        ],
        timeout=900,
    )
    state = _state(head.env, api)

    alive = [n for n in state["nodes"] if n["state"] == "ALIVE"]
    head_id = next(n["node_id"] for n in alive if n["is_head_node"])
    eval_id = next(n["node_id"] for n in alive if n["resources_total"].get("evalnode"))
    assert head_id != eval_id

    pool = [a for a in state["actors"] if a["class_name"] == "MergeEvalActor"]
    rsft = [a for a in state["actors"] if a["class_name"] == "RayTrainWorker"]
    tasks = [t for t in state["tasks"] if t["start_time_ms"] and t["end_time_ms"]]
    evals = [t for t in tasks if t["name"] == "MergeEvalActor.evaluate"]
    assert len(pool) == 1 and pool[0]["node_id"] == eval_id and pool[0]["num_restarts"] == 0
    assert len(rsft) == 2 and {a["node_id"] for a in rsft} == {head_id}  # one R-SFT per trial
    assert len(evals) >= 2 * 3 and {t["node_id"] for t in evals} == {eval_id}
    # "While": the one actor process (never restarted) was up before the first R-SFT task on
    # the head began and still evaluating after the last one ended.
    rsft_ids = {a["actor_id"] for a in rsft}
    rsft_tasks = [t for t in tasks if t["actor_id"] in rsft_ids and t["node_id"]]
    pool_ready = max(
        t["end_time_ms"]
        for t in tasks
        if t["actor_id"] == pool[0]["actor_id"] and t["type"] == "ACTOR_CREATION_TASK"
    )
    assert rsft_tasks and {t["node_id"] for t in rsft_tasks} == {head_id}
    assert pool_ready <= min(t["start_time_ms"] for t in rsft_tasks)
    assert max(t["end_time_ms"] for t in evals) >= max(t["end_time_ms"] for t in rsft_tasks)

    parent, _ = _mlflow_sweep(tmp_path, "mm4ke-ray-demo")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["eval_actors"] == "1"
