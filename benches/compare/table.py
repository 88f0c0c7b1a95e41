"""The table of benches/compare.sh: reads the JSON results of every run under a
results directory, takes the median of each figure over the runs, and prints one
Markdown table with the Sluice/peer ratios and the targets of the comparison issue.

It only reads and prints: a missing result (a system not run, a workload that
failed) shows as "-" and its target as "n/a", never as met.
"""

import json
import statistics
import sys
from pathlib import Path

SYSTEMS = [
    ("sluice", "Sluice"),
    ("nats-default", "JetStream default"),
    ("nats-sync", "JetStream sync=always"),
    ("redis", "Redis AOF always"),
]
PEERS = SYSTEMS[1:]


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def dig(doc, dotted):
    for key in dotted.split("."):
        if not isinstance(doc, dict) or doc.get(key) is None:
            return None
        doc = doc[key]
    return doc


class Results:
    def __init__(self, root):
        self.root = Path(root)
        self.runs = sorted(p for p in self.root.glob("run-*") if p.is_dir())
        self.settings = load(self.root / "settings.json") or {}
        self.idle = load(self.root / "footprint-idle.json")

    def median(self, name, dotted):
        """The median over the runs of a field of `<name>.json`, or None."""
        values = []
        for run in self.runs:
            v = dig(load(run / f"{name}.json"), dotted)
            if isinstance(v, (int, float)):
                values.append(float(v))
        return statistics.median(values) if values else None


def num(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def ms(v):
    return "-" if v is None else f"{v:.3f}"


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def times(r):
    return "-" if r is None else f"{r:.2f}×"


def verdict(ok):
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def check(value, predicate):
    return None if value is None else predicate(value)


def all_of(*oks):
    if any(ok is None for ok in oks):
        return None
    return all(oks)


def table(res):
    s = res.median
    rows = []

    def row(workload, metric, field, fmt):
        values = [s(f"{system}-{workload.lower()}", field) for system, _ in SYSTEMS]
        ratios = [times(ratio(values[0], v)) for v in values[1:]]
        rows.append([workload, metric, *[fmt(v) for v in values], *ratios, "", ""])
        return values

    def mark(target, ok):
        """Puts a target, and whether it was met, on the last row."""
        rows[-1][-2:] = [target, verdict(ok)]

    dd = s("machine-dd", "mb_per_sec")
    w1 = row("W1", "records/s", "records_per_sec", num)
    mark(
        "≥ 3× JS-default, ≥ 2× Redis",
        all_of(
            check(ratio(w1[0], w1[1]), lambda r: r >= 3),
            check(ratio(w1[0], w1[3]), lambda r: r >= 2),
        ),
    )
    w1_mb = row("W1", "MB/s", "mb_per_sec", lambda v: num(v, 1))
    mark(
        f"≥ 50% of dd fdatasync ({num(dd, 0)} MB/s): {pct(ratio(w1_mb[0], dd))}",
        check(ratio(w1_mb[0], dd), lambda r: r >= 0.5),
    )
    row("W1", "ack p99 ms", "ack_latency_ms.p99", ms)

    w2 = row("W2", "records/s", "records_per_sec", num)
    mark(
        "≥ 2,000,000 and ≥ 5× Redis",
        all_of(check(w2[0], lambda v: v >= 2e6), check(ratio(w2[0], w2[3]), lambda r: r >= 5)),
    )
    row("W2", "MB/s", "mb_per_sec", lambda v: num(v, 1))

    row("W3", "rate records/s", "records_per_sec", num)
    rows[-1][-2] = "½ of Sluice's W1 (a peer below that: ½ of its own)"
    row("W3", "ack p50 ms", "ack_latency_ms.p50", ms)
    ack99 = row("W3", "ack p99 ms", "ack_latency_ms.p99", ms)
    mark("≤ 2 ms", check(ack99[0], lambda v: v <= 2))
    row("W3", "ack p99.9 ms", "ack_latency_ms.p99_9", ms)
    row("W3", "e2e p50 ms", "end_to_end_latency_ms.p50", ms)
    e2e99 = row("W3", "e2e p99 ms", "end_to_end_latency_ms.p99", ms)
    mark(
        "≤ 3 ms and ≤ ½ JS-default's",
        all_of(check(e2e99[0], lambda v: v <= 3), check(ratio(e2e99[0], e2e99[1]), lambda r: r <= 0.5)),
    )
    row("W3", "e2e p99.9 ms", "end_to_end_latency_ms.p99_9", ms)

    w4 = row("W4", "replay MB/s", "mb_per_sec", lambda v: num(v, 1))
    mark(
        "≥ 1,200 MB/s and ≥ 3.5× JS",
        all_of(check(w4[0], lambda v: v >= 1200), check(ratio(w4[0], w4[1]), lambda r: r >= 3.5)),
    )
    row("W4", "replay records/s", "records_per_sec", num)

    w5 = s("sluice-w5", "records_per_sec")
    w5_mb = s("sluice-w5", "mb_per_sec")
    rows.append(
        ["W5", "records/s (RF3, 3 brokers)", num(w5), *["-"] * 6,
         f"≥ 50% of W1: {pct(ratio(w5, w1[0]))}", verdict(check(ratio(w5, w1[0]), lambda r: r >= 0.5))]
    )
    rows.append(["W5", "MB/s (RF3, 3 brokers)", num(w5_mb, 1), *["-"] * 6, "", ""])
    iperf = s("machine-iperf3", "mb_per_sec")
    rows.append(["machine", "dd conv=fdatasync MB/s", num(dd, 1), *["-"] * 6, "", ""])
    rows.append(["machine", "iperf3 loopback MB/s", num(iperf, 1), *["-"] * 6, "", ""])

    mib = lambda v: "-" if v is None else f"{v / 1024:,.0f}"  # noqa: E731
    heap_w1 = s("sluice-mem-after-w1", "RssAnon_kB")
    for when in ("after-w1", "after-w4"):
        name = f"sluice-mem-{when}"
        fields = ("VmRSS_kB", "VmHWM_kB", "RssAnon_kB", "RssFile_kB")
        rss, hwm, heap, mapped = (s(name, f) for f in fields)
        rows.append(
            ["memory", f"broker {when.replace('-w', ' W')}: RSS / peak / heap / mapped MiB",
             " / ".join(mib(v) for v in (rss, hwm, heap, mapped)), *["-"] * 6, "", ""]
        )
        if when == "after-w4":
            mark(
                "heap (RssAnon) within 64 MiB of after W1, whatever the backlog",
                None if heap is None or heap_w1 is None else heap <= heap_w1 + 64 * 1024,
            )
    if res.idle:
        for key in ("rf1", "rf3"):
            d = res.idle.get(key)
            if not d:
                continue
            cpu = d["cpu_pct_of_core_per_broker"]
            metric = f"{d['partitions']:,} partitions RF{d['replication_factor']}, CPU % of a core"
            if d["brokers"] > 1:
                metric += " per broker"
            if not d["settled"]:
                metric += f" (not settled: {d.get('with_leader', '?')} led)"
            rows.append(
                ["idle", metric, " / ".join(f"{c:.1f}" for c in cpu), *["-"] * 6,
                 "< 5% of a core", verdict(max(cpu) < 5 if d["settled"] else None)]
            )

    head = ["Workload", "Metric", *[label for _, label in SYSTEMS],
            *[f"Sluice ÷ {label}" for _, label in PEERS], "Target", "Met"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def pct(r):
    return "-" if r is None else f"{r * 100:.0f}%"


def main():
    res = Results(sys.argv[1] if len(sys.argv) > 1 else "target/compare/results")
    st = res.settings
    print(
        f"Sluice vs NATS JetStream {st.get('nats_server', '?')} and Redis {st.get('redis_server', '?')}, "
        f"{st.get('date', '?')}, commit {st.get('commit', '?')}: median of {len(res.runs)} run(s), "
        f"{st.get('duration_s', '?')} s per workload, {st.get('partitions', '?')} partitions, "
        f"{st.get('producers', '?')} producer(s), W4 backlog {st.get('backlog_mib', '?')} MiB, "
        f"{st.get('cpus', '?')} CPUs. Ratios are Sluice ÷ peer (for latencies lower is better).\n"
    )
    print(table(res))


if __name__ == "__main__":
    main()
