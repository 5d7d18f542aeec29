"""wrk as the load generator of the HTTP benchmarks: run a Lua scenario, read its figures.

wrk runs in its own process (the server keeps its core) and reports, through a Lua
``done`` hook, requests, duration, errors and the p50/p95/p99 latencies as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile

WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format("JSON{\\"requests\\":%d,\\"seconds\\":%f,\\"errors\\":%d,"
    .. "\\"non2xx\\":%d,\\"p50_ms\\":%f,\\"p95_ms\\":%f,\\"p99_ms\\":%f}\\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout, summary.errors.status,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000))
end
"""


def run_wrk(url: str, script: str, *, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk (1 thread) with a Lua ``script`` against ``url``; return its JSON report:
    requests, seconds, errors, non2xx, p50_ms, p95_ms, p99_ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script + WRK_REPORT)
        path = handle.name
    try:
        result = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                path,
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.unlink(path)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{result.stdout}\n{result.stderr}")
    match = re.search(r"JSON(\{.*\})", result.stdout)
    if match is None:
        raise RuntimeError(f"wrk gave no report:\n{result.stdout}\n{result.stderr}")
    report: dict[str, float] = json.loads(match.group(1))
    return report
