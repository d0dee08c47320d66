"""Where the gateway's Prometheus metrics live between processes (prometheus-client's multi-process mode).

Every process of one gateway (uvicorn's workers) writes its counters and histograms to memory-mapped files
in one folder, named by PROMETHEUS_MULTIPROC_DIR; `/metrics` in any worker adds them all up. The folder
must be known before prometheus-client is imported, so settings call `metrics_dir_ensure()`:
- a folder given by the operator is used as it is (they own its lifetime: empty it before a start);
- otherwise each gateway gets its own under var/metrics/, named after the process that chose it, which
  `run_gateway` does before it starts its workers, so they inherit one folder through the environment.
"""

import os
import shutil
from pathlib import Path

ENV_NAME = "PROMETHEUS_MULTIPROC_DIR"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_dir_ensure(var_dir: Path) -> Path:
    """The metrics folder of this gateway, created (and set in the environment) when none is set yet.

    A new folder starts empty: one left by an earlier process with the same pid is wiped, and folders of
    processes no longer running are removed on the way.
    """
    given = os.environ.get(ENV_NAME)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = var_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.iterdir():
        if stale.name.isdigit() and int(stale.name) != os.getpid() and not pid_alive(int(stale.name)):
            shutil.rmtree(stale, ignore_errors=True)
    path = root / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    os.environ[ENV_NAME] = str(path)
    return path
