"""What ``--cluster`` costs besides the cells: setup, and the scheduler per cell.

Starts ``--cluster local:N`` the way ``pinbench run`` does (workers, dashboard, the
determinism canary on each), then runs ``--cells`` cells that do nothing through the
same path as a benchmark's cell (unique key, resources, start event, result), and
prints the setup wall time and the overhead per cell of dask's scheduler and pinbench's
client (its start count, start event, the 0.1 s poll): wall time of the cells x workers
used / cells, since a cell that does nothing is all overhead. Measured
wall time of pinbench's and dask's own bookkeeping, not a cost of pinning.

    python bench/cluster_overhead.py [--workers 2] [--cells 200]
"""

from __future__ import annotations

import argparse
import io
import time


def _nothing(worker, workdir):
    """A cell that does nothing (pickled by value: this script is __main__)."""
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", type=int, default=200)
    args = parser.parse_args()

    from pinning.harness.cluster import CELL, MEMORY, ClusterRun, Job

    t0 = time.monotonic()
    with ClusterRun(f"local:{args.workers}", describe=lambda job, result: "done") as run:
        setup = time.monotonic() - t0
        jobs = [Job(f"nothing-{i}", _nothing, (), {CELL: 1, MEMORY: 0.01},
                    lambda name, status, why: why) for i in range(args.cells)]
        quiet, run.stream = run.stream, io.StringIO()  # 200 progress lines say nothing
        t1 = time.monotonic()
        outcomes = list(run.run(jobs))
        cells = time.monotonic() - t1
        run.stream = quiet
        workers = {o.result for o in outcomes}
        if len(outcomes) != args.cells:
            raise SystemExit(f"{len(outcomes)} of {args.cells} cells came back")
    print(f"setup (local:{args.workers}: start, dashboard, canary on every worker): "
          f"{setup:.2f} s")
    print(f"{args.cells} empty cells on {len(workers)} workers: {cells:.2f} s wall, "
          f"{cells * len(workers) / args.cells * 1e3:.1f} ms of client + scheduler overhead "
          "per cell (measured: wall x workers used / cells)")


if __name__ == "__main__":
    main()
