#!/usr/bin/env python3
"""Turns the raw results of benches/suite.sh into the tables of
docs/performance.md: medians over the passes, each figure as a ratio
against its baseline of the same run, the spread between the two halves of
the passes (two runs), and the issue's targets, met or missed.

Usage: suite_report.py RESULTS.jsonl MACHINE.json [DOC]
With DOC, the text between the suite's markers in DOC is replaced; without,
the tables are printed.
"""

import json
import statistics
import sys
from collections import defaultdict

BEGIN = "<!-- suite:begin -->"
END = "<!-- suite:end -->"


def load(path):
    rows = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["row"]].append(r)
    return rows


class Results:
    def __init__(self, rows):
        self.rows = rows

    def median(self, row, field):
        values = [r[field] for r in self.rows.get(row, []) if field in r]
        return statistics.median(values) if values else None

    def spread(self, row, field="ops"):
        """The relative difference between the medians of the first and the
        second half of the passes: two runs of the suite, back to back."""
        recs = sorted(self.rows.get(row, []), key=lambda r: r["pass"])
        if len(recs) < 2:
            return None
        half = len(recs) // 2
        a = statistics.median(r[field] for r in recs[:half])
        b = statistics.median(r[field] for r in recs[half:])
        mid = statistics.median(r[field] for r in recs)
        return abs(a - b) / mid * 100 if mid else None

    def passes(self, row):
        return len(self.rows.get(row, []))


def num(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def ratio(x, base):
    if x is None or not base:
        return "-"
    return f"{x / base:.2f}x"


def pct(x):
    return "-" if x is None else f"{x:.0f}%"


def ms(us):
    return "-" if us is None else f"{us / 1000:.2f} ms"


def render(res, machine):
    m = machine
    out = []
    out.append(
        f"Measured on {m['cores']} cores ({m['model']}), {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, {m['rustc']}, {m['redis']}; "
        f"{m['passes']} passes of {m['duration']} after a {m['warmup']} warm-up, "
        f"{m['concurrency']} requests in flight, 100-byte values, 16-byte keys, "
        "100,000 keys preloaded. Load average (1, 5, 15 min) at the start "
        f"{m.get('load_start', '-')}, at the end {m.get('load_end', '-')}: "
        "the suite itself keeps about two processes busy, more means other work "
        "shared the cores. Figures are medians over the passes; "
        "*spread* is how far apart the medians of the first and the second half "
        "of the passes (two runs, back to back) are, relative to the median."
    )
    out.append("")

    out.append("### One node, its ceiling and Redis")
    out.append("")
    out.append(
        "Baseline: the bare tonic server (`benches/bare_server.rs`) with the same "
        "mix (GET rows: 90% reads; SET rows: 0% reads). CPU is the server "
        "process's user + system time per operation. Both servers built with "
        f"{m.get('build', 'the release profile')}."
    )
    out.append("")
    out.append(
        "| row | ops/s | vs baseline | server CPU per op | vs baseline | p50 | p99 | spread |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    table = [
        ("bare tonic server, 90% reads", "bare_r90", "bare_r90"),
        ("**Kilovolt-DB, one node, 90% reads**", "kv_r90", "bare_r90"),
        ("bare tonic server, 0% reads", "bare_r0", "bare_r0"),
        ("**Kilovolt-DB, one node, 0% reads**", "kv_r0", "bare_r0"),
        ("Kilovolt-DB, `--batch 16`, 90% reads (latency per batch)", "kv_batch16", "bare_r90"),
        ("Redis GET", "redis_get", "bare_r90"),
        ("Redis SET", "redis_set", "bare_r0"),
        ("Redis GET `-P 16`", "redis_get_p16", "bare_r90"),
        ("Redis SET `-P 16`", "redis_set_p16", "bare_r0"),
    ]
    for name, row, base in table:
        ops, cpu = res.median(row, "ops"), res.median(row, "cpu_us")
        out.append(
            f"| {name} | {num(ops)} | {ratio(ops, res.median(base, 'ops'))} "
            f"| {num(cpu, 1)} µs | {ratio(cpu, res.median(base, 'cpu_us'))} "
            f"| {ms(res.median(row, 'p50_us'))} | {ms(res.median(row, 'p99_us'))} "
            f"| {pct(res.spread(row))} |"
        )
    out.append("")

    out.append("### Three nodes, replication factor 3, writes through one node")
    out.append("")
    out.append(
        "Baseline: one node, 0% reads, same run. CPU is that of all three nodes "
        "per write."
    )
    out.append("")
    out.append("| row | writes/s | vs one node | CPU per write | vs one node | p50 | p99 | spread |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in [("ONE", "rf3_one"), ("QUORUM", "rf3_quorum")]:
        ops, cpu = res.median(row, "ops"), res.median(row, "cpu_us")
        out.append(
            f"| {name} | {num(ops)} | {ratio(ops, res.median('kv_r0', 'ops'))} "
            f"| {num(cpu, 1)} µs | {ratio(cpu, res.median('kv_r0', 'cpu_us'))} "
            f"| {ms(res.median(row, 'p50_us'))} | {ms(res.median(row, 'p99_us'))} "
            f"| {pct(res.spread(row))} |"
        )
    out.append("")

    out.append("### TLS")
    out.append("")
    out.append(
        "Client TLS (rustls, ring), mutual TLS between nodes and a token on "
        "every request (docs/security.md), against the plaintext row of the "
        "same passes. CPU is that of the node(s) per operation."
    )
    out.append("")
    out.append("| row | ops/s | vs plaintext | CPU per op | vs plaintext | p50 | p99 | spread |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row, base in [
        ("one node, 90% reads", "tls_r90", "kv_r90"),
        ("one node, 0% reads", "tls_r0", "kv_r0"),
        ("three nodes, RF 3, writes at ONE", "tls_rf3_one", "rf3_one"),
    ]:
        ops, cpu = res.median(row, "ops"), res.median(row, "cpu_us")
        out.append(
            f"| {name} | {num(ops)} | {ratio(ops, res.median(base, 'ops'))} "
            f"| {num(cpu, 1)} µs | {ratio(cpu, res.median(base, 'cpu_us'))} "
            f"| {ms(res.median(row, 'p50_us'))} | {ms(res.median(row, 'p99_us'))} "
            f"| {pct(res.spread(row))} |"
        )
    out.append("")

    out.append("### Latency at half of the peak")
    out.append("")
    out.append(
        "An open load (`kilovolt-bench --rate`), 90% reads, at half of each "
        "server's median peak above; latency counts from when each request was "
        "due. Median of 2 runs."
    )
    out.append("")
    out.append("| server | rate asked | ops/s | p50 | p99 | p99 vs baseline |")
    out.append("|---|---:|---:|---:|---:|---:|")
    base_p99 = res.median("bare_half", "p99_us")
    for name, row, peak in [
        ("bare tonic server (baseline)", "bare_half", "bare_r90"),
        ("**Kilovolt-DB, one node**", "kv_half", "kv_r90"),
    ]:
        peak_ops = res.median(peak, "ops")
        out.append(
            f"| {name} | {num(peak_ops / 2 if peak_ops else None)}/s "
            f"| {num(res.median(row, 'ops'))} | {ms(res.median(row, 'p50_us'))} "
            f"| {ms(res.median(row, 'p99_us'))} | {ratio(res.median(row, 'p99_us'), base_p99)} |"
        )
    out.append("")

    out.append("### Memory")
    out.append("")
    keys = next((r["keys"] for r in res.rows.get("memory_redis", [])), None)
    out.append(
        f"Resident memory (VmRSS) of a fresh server before and after loading "
        f"{num(keys)} keys of 16 bytes with 100-byte values; baseline: Redis."
    )
    out.append("")
    out.append("| server | before | after | bytes per key | vs Redis |")
    out.append("|---|---:|---:|---:|---:|")
    redis_bpk = res.median("memory_redis", "bytes_per_key")
    for name, row in [
        ("Redis (baseline)", "memory_redis"),
        ("bare `scc::HashMap<String, String>`", "memory_bare"),
        ("**Kilovolt-DB, one node**", "memory_kv"),
    ]:
        before = res.median(row, "rss_before_kib")
        after = res.median(row, "rss_after_kib")
        bpk = res.median(row, "bytes_per_key")
        out.append(
            f"| {name} | {num(before / 1024 if before else None, 1)} MiB "
            f"| {num(after / 1024 if after else None, 1)} MiB | {num(bpk)} "
            f"| {ratio(bpk, redis_bpk)} |"
        )
    out.append("")

    out.append("### The cost of metrics")
    out.append("")
    out.append(
        "Two fresh nodes alike but for `--metrics-addr`, the second scraped "
        "every second; baseline: the node without metrics, same run. CPU "
        "includes the scrapes."
    )
    out.append("")
    out.append("| row | ops/s | vs without | server CPU per op | vs without | p50 | p99 | spread |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row, base in [
        ("without metrics, 90% reads", "metrics_off_r90", "metrics_off_r90"),
        ("**with `--metrics-addr`, 90% reads**", "metrics_on_r90", "metrics_off_r90"),
        ("without metrics, 0% reads", "metrics_off_r0", "metrics_off_r0"),
        ("**with `--metrics-addr`, 0% reads**", "metrics_on_r0", "metrics_off_r0"),
    ]:
        ops, cpu = res.median(row, "ops"), res.median(row, "cpu_us")
        out.append(
            f"| {name} | {num(ops)} | {ratio(ops, res.median(base, 'ops'))} "
            f"| {num(cpu, 1)} µs | {ratio(cpu, res.median(base, 'cpu_us'))} "
            f"| {ms(res.median(row, 'p50_us'))} | {ms(res.median(row, 'p99_us'))} "
            f"| {pct(res.spread(row))} |"
        )
    out.append("")

    out.append("### Targets")
    out.append("")
    out.append("| target | measured | |")
    out.append("|---|---:|---|")

    def check(name, value, limit, fmt, at_least):
        if value is None:
            out.append(f"| {name} | - | not measured |")
            return
        met = value >= limit if at_least else value <= limit
        out.append(f"| {name} | {fmt(value)} | {'met' if met else 'missed'} |")

    def rel(a, b):
        x, y = res.median(a[0], a[1]), res.median(b[0], b[1])
        return x / y if x is not None and y else None

    times = lambda v: f"{v:.2f}x"
    check("one node, 90% reads: ops/s ≥ 0.95x bare", rel(("kv_r90", "ops"), ("bare_r90", "ops")), 0.95, times, True)
    check("one node, 0% reads: ops/s ≥ 0.95x bare", rel(("kv_r0", "ops"), ("bare_r0", "ops")), 0.95, times, True)
    check("one node, 90% reads: CPU per op ≤ 1.1x bare", rel(("kv_r90", "cpu_us"), ("bare_r90", "cpu_us")), 1.1, times, False)
    check("one node, 0% reads: CPU per op ≤ 1.1x bare", rel(("kv_r0", "cpu_us"), ("bare_r0", "cpu_us")), 1.1, times, False)
    check("`--batch 16` ≥ 4x one node unbatched", rel(("kv_batch16", "ops"), ("kv_r90", "ops")), 4.0, times, True)
    check("`--batch 16` > Redis GET unpipelined", rel(("kv_batch16", "ops"), ("redis_get", "ops")), 1.0, times, True)
    check("`--batch 16` ≥ 0.5x Redis GET `-P 16` (aim)", rel(("kv_batch16", "ops"), ("redis_get_p16", "ops")), 0.5, times, True)
    check("three nodes, ONE: ≥ 0.5x one node's writes", rel(("rf3_one", "ops"), ("kv_r0", "ops")), 0.5, times, True)
    check("TLS, one node, 90% reads: ≥ 0.8x plaintext", rel(("tls_r90", "ops"), ("kv_r90", "ops")), 0.8, times, True)
    check("TLS, one node, 0% reads: ≥ 0.8x plaintext", rel(("tls_r0", "ops"), ("kv_r0", "ops")), 0.8, times, True)
    check("TLS, three nodes, ONE: ≥ 0.8x plaintext", rel(("tls_rf3_one", "ops"), ("rf3_one", "ops")), 0.8, times, True)
    check("memory per key ≤ 1.5x Redis", rel(("memory_kv", "bytes_per_key"), ("memory_redis", "bytes_per_key")), 1.5, times, False)
    for mix in ("r90", "r0"):
        reads = "90%" if mix == "r90" else "0%"
        check(f"metrics, {reads} reads: ops/s ≥ 0.97x without", rel((f"metrics_on_{mix}", "ops"), (f"metrics_off_{mix}", "ops")), 0.97, times, True)
        check(f"metrics, {reads} reads: CPU per op ≤ 1.03x without", rel((f"metrics_on_{mix}", "cpu_us"), (f"metrics_off_{mix}", "cpu_us")), 1.03, times, False)
    p99 = res.median("kv_half", "p99_us")
    check("p99 at half of peak, one node < 2 ms", p99 / 1000 if p99 is not None else None, 2.0, lambda v: f"{v:.2f} ms", False)
    return "\n".join(out)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    res = Results(load(sys.argv[1]))
    with open(sys.argv[2]) as f:
        machine = json.load(f)
    text = render(res, machine)
    doc = sys.argv[3] if len(sys.argv) == 4 else ""
    if not doc:
        print(text)
        return
    with open(doc) as f:
        page = f.read()
    start, end = page.find(BEGIN), page.find(END)
    if start < 0 or end < start:
        sys.exit(f"{doc} has no {BEGIN} ... {END} section to rewrite")
    page = page[: start + len(BEGIN)] + "\n" + text + "\n" + page[end:]
    with open(doc, "w") as f:
        f.write(page)
    print(text)
    print(f"\nrewrote the tables in {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
