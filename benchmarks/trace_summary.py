"""Where one jitted call's time goes on a device, from a JAX profiler trace (`jax.profiler.trace(dir,
create_perfetto_trace=True)`): how many kernels a call launches, how long the device is busy with them, and
how long a call takes from dispatch to dispatch. Busy time far below the wall time means the step is bound by
launches and the host, not by the card; the kernels that take the most time say where to look next.

The trace's perfetto_trace.json.gz is plain JSON (Chrome trace events), read here with the standard library:
no TensorBoard or xprof needed, so the summary runs on the GPU machine itself and again here on the file.

Usage: python benchmarks/trace_summary.py TRACE_DIR_OR_FILE [--function _event] [--top 12]
       python benchmarks/trace_summary.py TRACE_DIR_OR_FILE --whole    # all the device's kernels (a train step)
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
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


def _on_device(events: list[dict], processes: dict, line_names: dict) -> list[dict]:
    """The events on a device's CUDA streams: CUPTI's lines are the streams; an export that adds lines of its own
    (XLA Ops, XLA Modules: the same kernels again) must not count them twice."""
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    streams = {key for key, name in line_names.items() if key[0] in device_pids and str(name).startswith("Stream")}
    return [e for e in events if e["pid"] in device_pids and (not streams or (e["pid"], e.get("tid")) in streams)]


def _by_name(kernels: list[dict]) -> tuple[Counter, Counter]:
    """Time (us) and count of the kernels under each name."""
    time_by_name, count_by_name = Counter(), Counter()
    for e in kernels:
        time_by_name[e["name"]] += e["dur"]
        count_by_name[e["name"]] += 1
    return time_by_name, count_by_name


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
    # CUDA graphs on the host: XLA re-records (updates) a graph whose buffers moved since its last launch, and a
    # launch after an update costs more: both were most of an event's host time before its buffers stayed put
    end = calls[-1]["ts"] + calls[-1]["dur"]
    graph_time, graph_count = Counter(), Counter()
    for e in events:
        kind = "launch" if e["name"].startswith("cuGraphLaunch") else e["name"].removeprefix("command_buffer::")
        if e["pid"] not in device_pids and kind in ("launch", "update") and first <= e["ts"] <= end:
            graph_time[kind] += e["dur"]
            graph_count[kind] += 1
    if graph_count:
        out.append(f"CUDA graphs, on the host: {graph_count['launch'] / len(calls):.1f} launches a call "
                   f"({graph_time['launch'] / len(calls) / 1000:.2f} ms), {graph_count['update'] / len(calls):.1f} "
                   f"updates ({graph_time['update'] / len(calls) / 1000:.2f} ms)")
    on_device = _on_device(events, processes, line_names)
    if not on_device:
        return out + [f"no device events (processes: {', '.join(sorted(set(processes.values())))}): on a CPU, or "
                      "the profiler found no CUPTI"]
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
    time_by_name, count_by_name = _by_name(mine)
    out.append(f"its kernels by time ({len(time_by_name)} distinct names):")
    for name, spent in time_by_name.most_common(top):
        out.append(f"  {spent / n / 1000:7.3f} ms a call {count_by_name[name] / n:6.1f}x  {name[:90]}")
    for name, others in sorted(by_module.items(), key=lambda item: -sum(e["dur"] for e in item[1]))[:4]:
        out.append(f"other module {name}: {len(others) / n:.0f} kernels, "
                   f"{sum(e['dur'] for e in others) / n / 1000:.2f} ms a call of {function}")
    return out


# kernel names of matrix products: cuBLAS's (nvjet, sm90_xmma_gemm, gemv, cutlass), XLA's Triton GEMM fusions
PRODUCT_KERNEL = re.compile(r"gemm|gemv|nvjet|cutlass|xmma|cublas|matmul", re.IGNORECASE)


def device_time(path: str | Path, top: int = 12) -> list[str]:
    """Lines that say where the device's time goes over a whole trace (Levanter's profile of a train step, say):
    the kernels' span, how busy the device is within it, the share of matrix products (the work MFU counts) and
    the kernels that take the most time."""
    events, processes, line_names = load_events(path)
    on_device = _on_device(events, processes, line_names)
    kernels = [e for e in on_device if not _is_copy(e)]
    if not kernels:
        return [f"{path}: no kernels on a device (processes: {', '.join(sorted(set(processes.values())))})"]
    copies = [e for e in on_device if _is_copy(e)]
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    busy = _busy([(e["ts"], e["ts"] + e["dur"]) for e in kernels])
    products = [e for e in kernels if PRODUCT_KERNEL.search(e["name"])]
    product_time = sum(e["dur"] for e in products)
    copy_time = sum(e["dur"] for e in copies)
    out = [f"device: {len(kernels)} kernels over {span / 1000:.1f} ms, busy {busy / 1000:.1f} ms "
           f"({100 * busy / span:.0f}%), {busy / len(kernels):.1f} us a kernel; {len(copies)} memcpy/memset "
           f"({copy_time / 1000:.1f} ms)",
           f"matrix products: {len(products)} kernels, {product_time / 1000:.1f} ms ({100 * product_time / busy:.0f}% "
           f"of the busy time); the rest {len(kernels) - len(products)} kernels, {(busy - product_time) / 1000:.1f} ms"]
    time_by_name, count_by_name = _by_name(kernels)
    out.append(f"kernels by time ({len(time_by_name)} distinct names):")
    for name, spent in time_by_name.most_common(top):
        out.append(f"  {spent / 1000:8.1f} ms {100 * spent / busy:5.1f}% {count_by_name[name]:6d}x  {name[:90]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", help="a trace directory (perfetto_trace.json.gz under it) or that file")
    parser.add_argument("--function", default="_event", help="the jitted function whose calls are summarized")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--whole", action="store_true",
                        help="the device's time over the whole trace (a train step's profile), not a function's calls")
    args = parser.parse_args()
    print("\n".join(device_time(args.trace, args.top) if args.whole else summarize(args.trace, args.function, args.top)))


if __name__ == "__main__":
    main()
