"""Where one jitted call's time goes on a device, from a JAX profiler trace (`jax.profiler.trace(dir,
create_perfetto_trace=True)`): how many kernels a call launches, how long the device is busy with them, and
how long a call takes from dispatch to dispatch. Busy time far below the wall time means the step is bound by
launches and the host, not by the card; the kernels that take the most time say where to look next.

The trace's perfetto_trace.json.gz is plain JSON (Chrome trace events), read here with the standard library:
no TensorBoard or xprof needed, so the summary runs on the GPU machine itself and again here on the file.

Usage: python benchmarks/trace_summary.py TRACE_DIR_OR_FILE [--function _event] [--top 12]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path


def load_events(path: str | Path) -> tuple[list[dict], dict[int, str], dict[tuple[int, int], str]]:
    """The complete ('X') events of a trace, the name of each process (pid -> e.g. '/device:GPU:0') and of
    each line ((pid, tid) -> e.g. 'Stream #13(Compute)')."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("perfetto_trace.json.gz"))
        if not found:
            raise FileNotFoundError(f"{path}: no perfetto_trace.json.gz under it (was the trace made with "
                                    "create_perfetto_trace=True?)")
        path = found[-1]
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    names = [e for e in events if e.get("ph") == "M" and "args" in e]
    processes = {e["pid"]: e["args"].get("name", "") for e in names if e.get("name") == "process_name"}
    lines = {(e["pid"], e.get("tid")): e["args"].get("name", "") for e in names if e.get("name") == "thread_name"}
    return [e for e in events if e.get("ph") == "X" and "dur" in e], processes, lines


def _busy(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def summarize(path: str | Path, function: str = "_event", top: int = 12) -> list[str]:
    """Lines that say, per call of the jitted `function` (from the first call's dispatch to the last one's),
    the events and busy time of each line of the device (its streams: kernels and copies; XLA's own lines
    of modules and ops), against the wall time; then the kernels that take the most device time."""
    events, processes, line_names = load_events(path)
    calls = []
    for e in sorted((e for e in events if e.get("name") == f"PjitFunction({function})"), key=lambda e: e["ts"]):
        if not calls or e["ts"] >= calls[-1]["ts"] + calls[-1]["dur"]:  # (a call's nested events of that name)
            calls.append(e)
    if len(calls) < 2:
        return [f"{path}: {len(calls)} call(s) of {function} in the trace; two or more are needed"]
    # from the first call's dispatch to the last one's: n - 1 calls, whatever ran between them included
    begin, end = calls[0]["ts"], calls[-1]["ts"]
    n = len(calls) - 1
    wall = (end - begin) / n
    dispatch = sum(e["dur"] for e in calls[:n]) / n
    out = [f"{n} calls of {function}: {wall / 1000:.2f} ms a call from dispatch to dispatch; the host spends "
           f"{dispatch / 1000:.2f} ms in each call's dispatch"]
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    on_device = [e for e in events if e["pid"] in device_pids and begin <= e["ts"] < end]
    if not on_device:
        return out + [f"no device events (processes: {', '.join(sorted(set(processes.values())))}): on a CPU, or "
                      "the profiler found no CUPTI"]
    by_line: dict[tuple[int, int], list[dict]] = {}
    for e in on_device:
        by_line.setdefault((e["pid"], e.get("tid")), []).append(e)
    for key, line in sorted(by_line.items(), key=lambda item: -len(item[1])):
        busy = _busy([(e["ts"], e["ts"] + e["dur"]) for e in line])
        out.append(f"  {processes.get(key[0], key[0])} {line_names.get(key, key[1])}: {len(line) / n:.0f} a call, "
                   f"busy {busy / n / 1000:.2f} ms ({100 * busy / (end - begin):.0f}% of the wall time), "
                   f"{busy / len(line):.1f} us each")
    # the kernels: the busiest line named as a stream (CUPTI's), else the line with the most events
    streams = [key for key in by_line if "stream" in str(line_names.get(key, "")).lower()]
    kernels = max(streams or by_line, key=lambda key: len(by_line[key]))
    time_by_name, count_by_name = Counter(), Counter()
    for e in by_line[kernels]:
        time_by_name[e["name"]] += e["dur"]
        count_by_name[e["name"]] += 1
    out.append(f"top of {line_names.get(kernels, kernels[1])} by time ({len(time_by_name)} distinct names):")
    for name, spent in time_by_name.most_common(top):
        out.append(f"  {spent / n / 1000:7.3f} ms a call {count_by_name[name] / n:6.1f}x  {name[:90]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", help="a trace directory (perfetto_trace.json.gz under it) or that file")
    parser.add_argument("--function", default="_event", help="the jitted function whose calls are summarized")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print("\n".join(summarize(args.trace, args.function, args.top)))


if __name__ == "__main__":
    main()
