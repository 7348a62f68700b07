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


def _is_copy(event: dict) -> bool:
    return event.get("name", "").startswith(("Memcpy", "Memset"))


def summarize(path: str | Path, function: str = "_event", top: int = 12) -> list[str]:
    """Lines that say, per call of the jitted `function`: the wall time from one call's dispatch to the next,
    its kernels on the device and how long the device is busy with them; then the kernels that take the most
    time, and the device time of the other jitted functions.

    A GPU trace (CUPTI's, as jax writes it) has a process per device ('/device:GPU:0') with a line per CUDA
    stream ('Stream #13(Compute)'), one event per kernel, memcpy or memset, each kernel tagged with its XLA
    module ('hlo_module': 'jit_<function>'). Kernels are given to the function by that tag, over the whole
    trace (the device runs behind the host, so a time window would mix calls); a trace without tags falls back
    to the kernels between the first call's dispatch and the last one's."""
    events, processes, line_names = load_events(path)
    calls = []
    for e in sorted((e for e in events if e.get("name") == f"PjitFunction({function})"),
                    key=lambda e: (e["ts"], -e["dur"])):
        if not calls or e["ts"] >= calls[-1]["ts"] + calls[-1]["dur"]:  # (each call's inner event of that name)
            calls.append(e)
    if len(calls) < 2:
        return [f"{path}: {len(calls)} call(s) of {function} in the trace; two or more are needed"]
    first, last = calls[0]["ts"], calls[-1]["ts"]
    wall = (last - first) / (len(calls) - 1)
    dispatch = sum(e["dur"] for e in calls) / len(calls)
    out = [f"{len(calls)} calls of {function}: {wall / 1000:.2f} ms a call from dispatch to dispatch; the host "
           f"spends {dispatch / 1000:.2f} ms in each call's dispatch"]
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    on_device = [e for e in events if e["pid"] in device_pids]
    if not on_device:
        return out + [f"no device events (processes: {', '.join(sorted(set(processes.values())))}): on a CPU, or "
                      "the profiler found no CUPTI"]
    # CUPTI's lines are the streams; an export that adds lines of its own (XLA Ops, XLA Modules: the same kernels
    # again) must not count them twice
    streams = {key for key, name in line_names.items() if key[0] in device_pids and str(name).startswith("Stream")}
    if streams:
        on_device = [e for e in on_device if (e["pid"], e.get("tid")) in streams]
    kernels = [e for e in on_device if not _is_copy(e)]
    copies = [e for e in on_device if _is_copy(e)]

    def module(e: dict) -> str | None:
        return (e.get("args") or {}).get("hlo_module")

    if any(module(e) for e in kernels):
        by_module: dict[str, list[dict]] = {}
        for e in kernels:
            by_module.setdefault(str(module(e)).split(".")[0], []).append(e)
        mine = by_module.pop(f"jit_{function}", [])
        n = len(calls)
        how = f"tagged jit_{function}"
    else:  # untagged: what ran on the device between the first dispatch and the last
        mine = [e for e in kernels if first <= e["ts"] < last]
        by_module, n = {}, len(calls) - 1
        how = "in the window of the calls (no module tags)"
    if not mine:
        return out + [f"no kernels {how} among {len(kernels)} on the device"]
    busy = _busy([(e["ts"], e["ts"] + e["dur"]) for e in mine])
    lines = Counter(line_names.get((e["pid"], e.get("tid")), str(e.get("tid"))) for e in mine)
    out.append(f"device: {len(mine) / n:.0f} kernels a call ({how}; on {', '.join(sorted(lines))}), busy "
               f"{busy / n / 1000:.2f} ms a call ({100 * busy / n / wall:.0f}% of the wall time), "
               f"{busy / len(mine):.1f} us a kernel; {len(copies) / n:.1f} memcpy/memset a call, all functions")
    time_by_name, count_by_name = Counter(), Counter()
    for e in mine:
        time_by_name[e["name"]] += e["dur"]
        count_by_name[e["name"]] += 1
    out.append(f"its kernels by time ({len(time_by_name)} distinct names):")
    for name, spent in time_by_name.most_common(top):
        out.append(f"  {spent / n / 1000:7.3f} ms a call {count_by_name[name] / n:6.1f}x  {name[:90]}")
    for name, others in sorted(by_module.items(), key=lambda item: -sum(e["dur"] for e in item[1]))[:4]:
        out.append(f"other module {name}: {len(others) / n:.0f} kernels, "
                   f"{sum(e['dur'] for e in others) / n / 1000:.2f} ms a call of {function}")
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
