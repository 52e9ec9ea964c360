"""Runs a multi-worker training on this machine: one process per worker on loopback.

    python -m tf_dpu.local_cluster --workers=2 -- --flagfile=flags/quickstart.flags --out_dir=runs/mw

Each worker is `python -m tf_dpu.train ... --strategy=multi_worker` with its
own `TF_CONFIG` (free ports on 127.0.0.1), exactly as separate machines
would run it. The chief's output is shown; the other workers' output goes
to a temporary file, shown only if a worker fails. When one worker fails the
others are stopped, since they would wait for it in the next collective.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

_POLL_SECONDS = 0.2


def free_ports(count: int) -> List[int]:
    """`count` ports that were free on 127.0.0.1 a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(ports: Sequence[int], index: int) -> str:
    """The `TF_CONFIG` of worker `index` in a loopback cluster (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def launch(train_args: Sequence[str], workers: int = 2, timeout: Optional[float] = None,
           env: Optional[dict] = None, quiet_chief: bool = False) -> int:
    """Runs the workers to the end; returns 0, or the first failing worker's status.

    Args:
      train_args: flags for `tf_dpu.train` (`--strategy=multi_worker` is added).
      workers: number of worker processes.
      timeout: seconds before all workers are stopped (status 124).
      env: the workers' environment (default: this process's).
      quiet_chief: send the chief's output to a file too (shown on failure).
    """
    ports = free_ports(workers)
    base_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory() as logs:
        processes, log_paths = [], []
        for index in range(workers):
            log_path = os.path.join(logs, f"worker_{index}.log")
            log_paths.append(log_path)
            to_file = index > 0 or quiet_chief
            output = open(log_path, "wb") if to_file else None  # pylint: disable=consider-using-with
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tf_dpu.train", *train_args, "--strategy=multi_worker"],
                env=dict(base_env, TF_CONFIG=tf_config(ports, index)),
                stdout=output, stderr=subprocess.STDOUT if to_file else None))
            if output:
                output.close()
        status = _wait(processes, timeout)
        if status:
            for index, path in enumerate(log_paths):
                if os.path.exists(path) and os.path.getsize(path):
                    with open(path, "rb") as f:
                        tail = f.read()[-3000:].decode("utf-8", "replace")
                    print(f"--- worker {index} (last lines) ---\n{tail}", file=sys.stderr)
        return status


def _wait(processes, timeout: Optional[float]) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in processes]
            failed = [c for c in codes if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                return failed[0] if failed else 0
            if deadline is not None and time.monotonic() > deadline:
                print("error: the workers did not finish in time", file=sys.stderr)
                return 124
            time.sleep(_POLL_SECONDS)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def main(argv: Sequence[str]) -> int:
    workers = 2
    args = list(argv)
    if args and args[0].startswith("--workers="):
        value = args.pop(0).split("=", 1)[1]
        if not value.isdigit() or int(value) < 1:
            print(f"error: --workers must be a positive integer, got {value!r}", file=sys.stderr)
            return 2
        workers = int(value)
    if args and args[0] == "--":
        args.pop(0)
    if any(a.startswith("--strategy") for a in args):
        print("error: --strategy is set to multi_worker by the launcher", file=sys.stderr)
        return 2
    return launch(args, workers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
