"""The benchmark suite's one command: `.venv/bin/python bench/run.py [--quick | --smoke]`.

Starts the simulated upstream and gunicorn in a temporary directory, measures, stops everything,
and writes the report (docs/PERFORMANCE.md for a full run). See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

# Run as a script (`python bench/run.py`): make the repository importable, as `python -m` would.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import DOCS_REPORT, Options, parse_options
from bench.procs import REPO
from bench.report import checks, render
from bench.suite import Run, cleanup, say


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Unwinds the run, so the `finally` blocks stop every child process. Installed for SIGINT too:
    # a shell starts background jobs with SIGINT ignored, and a run must still stop when asked.
    raise KeyboardInterrupt(f"signal {signum}")


def report_path(options: Options) -> Path:
    if options.report is not None:
        return options.report
    if options.mode == "full":
        return DOCS_REPORT
    # Quick and smoke figures must not overwrite the full run's report.
    return REPO / "bench" / "results" / f"PERFORMANCE-{options.mode}.md"


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    say(f"{options.mode} run in {workdir}")
    failed = True
    try:
        results = Run(options, workdir).execute()
        path = report_path(options)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(results))
        failed = False
    except KeyboardInterrupt:
        failed = False  # asked to stop: nothing to look into
        say("interrupted; every process of the run was stopped")
        return 130
    finally:
        cleanup(workdir, options.keep, failed)
    print()
    for check in checks(results):
        print(f"{check.verdict:5} {check.benchmark:24} {check.target}: {check.figure}")
    say(f"report written to {path} ({results.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
