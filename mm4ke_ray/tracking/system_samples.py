"""A trial's system metrics: sampled where the trial runs, logged by the driver on its trial run.

MLflow's `SystemMetricsMonitor` logs from the process it samples in, and a trial runs in a Ray
worker, which never talks to the tracking store. So the trial samples with MLflow's own monitor
classes (the same metrics under the same `system/...` names: CPU, memory, disk, network, GPU when
present) and returns the samples with its result (compact: names once, a row per sample); the
driver logs them on the trial's run with their own timestamps and steps, so that run's "System
metrics" tab shows the trial as it ran. Nothing is imported or started unless `tracking.system_metrics` is on.
"""

from __future__ import annotations

import math
import threading
import time

SYSTEM_METRICS = "system_metrics"  # the result key of a trial's samples
TRIAL_START_MS = "trial_start_ms"  # when the trial began and ended (epoch ms): its trial run's span
TRIAL_END_MS = "trial_end_ms"
PREFIX = "system/"  # MLflow's prefix for system metrics (SystemMetricsMonitor)
MAX_SAMPLES = 128  # past this, every other sample is dropped and the interval doubles
MIN_TAIL_S = 1.0  # a last sample at stop needs this long since the one before (CPU % over less is noise)


def now_ms() -> int:
    return int(time.time() * 1000)


def _monitors() -> list:
    """MLflow's default monitors, as `SystemMetricsMonitor` picks them (NVIDIA GPU, else AMD, else none)."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):
        try:
            monitors.append(gpu())
            break
        except Exception:  # noqa: BLE001 - no such GPU or library: MLflow skips it the same way
            continue
    return monitors


class SystemSampler:
    """Samples this machine's system metrics every `interval_s` in a daemon thread until `stop`.

    At most `max_samples` are kept: a long trial keeps every other one and samples half as often,
    so its samples still span all of it. Each sample keeps its own timestamp and step; steps count
    intervals of the first `interval_s` (0, 1, 2, ..., then 0, 2, 4, ... once halved).
    """

    def __init__(self, interval_s: float, max_samples: int = MAX_SAMPLES):
        self.interval_s = interval_s
        self.max_samples = max(2, max_samples)
        self.monitors = _monitors()
        self.samples: list[tuple[int, int, dict]] = []  # (timestamp ms, step, {name: value})
        self._step = 0
        self._stride = 1  # steps count intervals of the first `interval_s`, also once it doubled
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mm4ke-system-metrics", daemon=True)
        self._thread.start()

    def _collect(self) -> dict:
        values = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            values.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return values

    def _sample(self) -> None:
        self.samples.append((now_ms(), self._step, self._collect()))
        self._step += self._stride
        if len(self.samples) >= self.max_samples:
            self.samples = self.samples[::2]
            self.interval_s *= 2
            self._stride *= 2

    def _loop(self) -> None:
        # Every reading in this thread: psutil measures CPU % since the same thread's last call,
        # and its first call has nothing to measure against (discarded).
        try:
            self._collect()
            while not self._done.wait(self.interval_s):
                self._sample()
            # A last sample of the time since the one before: a trial shorter than one interval gets one too.
            if not self.samples or now_ms() - self.samples[-1][0] >= MIN_TAIL_S * 1000:
                self._sample()
        except Exception:  # noqa: BLE001 - metrics are a courtesy; never fail the trial for them
            return

    def stop(self) -> dict:
        """End sampling; the samples, compact for the trial's result (`metric_items` expands them)."""
        self._done.set()
        self._thread.join()
        names = sorted({name for _, _, values in self.samples for name in values})
        return {"names": names, "rows": [[ts, step, *(_number(values.get(n)) for n in names)]
                                         for ts, step, values in self.samples]}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 3)


def metric_items(samples: dict) -> list[list]:
    """A trial's samples (`SystemSampler.stop`) as MLflow metric items `[system/<name>, value,
    timestamp_ms, step]`, with MLflow's names and each sample's own time and step."""
    names = samples.get("names") or []
    return [[PREFIX + name, value, ts, step] for ts, step, *values in samples.get("rows") or []
            for name, value in zip(names, values, strict=True) if value is not None]


def start_sampling(interval_s: float | None) -> SystemSampler | None:
    """A running sampler, or None when system metrics are off (`interval_s` None): nothing imported."""
    return SystemSampler(interval_s) if interval_s else None
