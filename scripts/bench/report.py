"""Turns the load generator's JSON figures into the results section of BENCHMARKS.md (between its
markers; the rest of the file is kept) and a chart (PNG) of throughput and latency."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def table(r):
    limit = r["library_limit_rows_per_s"]
    s1 = r["scenario_1"]
    e2e = s1["end_to_end_records_per_s"]
    rows = [("library limit: arrow-json decode + Parquet (snappy), 1 thread, no HTTP", limit, 1.0)]
    b = r.get("baselines", {})
    if b:
        rows.append(("seed's pipeline: json.loads -> pandas -> Parquet gzip, 100K chunks", b["pandas_rows_per_s"], b["pandas_rows_per_s"] / limit))
        rows.append((f"DuckDB executemany ({b['duckdb_executemany_rows_timed']:,} rows, extrapolated)", b["duckdb_executemany_rows_per_s"], b["duckdb_executemany_rows_per_s"] / limit))
        rows.append((f"DuckDB row-by-row INSERT ({b['duckdb_row_by_row_rows_timed']:,} rows, extrapolated)", b["duckdb_row_by_row_rows_per_s"], b["duckdb_row_by_row_rows_per_s"] / limit))
    rows.append((f"snowgate ack (202 staged), {s1['posts']} x {s1['batch']:,} POSTs, concurrency {s1['concurrency']}", s1["ack_records_per_s"], s1["ack_records_per_s"] / limit))
    rows.append(("snowgate end to end (first POST -> all rows in DuckDB)", e2e, e2e / limit))
    out = ["| scenario 1 | records/s | of the library limit |", "|---|---:|---:|"]
    out += [f"| {name} | {value:,.0f} | {ratio:.2f} |" for name, value, ratio in rows]
    if b:
        out.append("")
        out.append(f"snowgate end to end is {e2e / b['pandas_rows_per_s']:.1f}x the pandas pipeline and "
                   f"{e2e / b['duckdb_row_by_row_rows_per_s']:.0f}x row-by-row inserts, in the same run.")
    return "\n".join(out)


def steps(s):
    f = s.get("flushes")
    if not f:
        return ""
    ms = [f[k] if f[k] is not None else "-" for k in ("encode_mean_ms", "stage_put_mean_ms", "commit_mean_ms")]
    return f"{f['files']:,.0f}: {ms[0]} / {ms[1]} / {ms[2]} ms"


def scenarios(r):
    out = ["| scenario | records | POSTs x batch, clients | ack records/s (MB/s) | first POST -> all loaded | ack p50 / p99 / max | rejected | peak RSS | gateway CPU (µs a record) | files: encode / stage write / commit (mean) |",
           "|---|---:|---|---:|---:|---|---:|---:|---:|---|"]
    base = {"scenario_1": "1: one partner, large batches", "scenario_2": "2: 100 clients, batches of 100",
            "scenario_3": "3: 1% bad records and a new field"}
    names = dict(base)
    names.update({f"{key}_postgres_s3": f"{name} (Postgres ledger, s3s-fs stage)" for key, name in base.items()})
    for key, name in names.items():
        if key not in r:
            continue
        s = r[key]
        lat = s["ack_latency_ms"]
        out.append(f"| {name} | {s['records']:,} | {s['posts']:,} x {s['batch']:,}, {s['concurrency']} | "
                   f"{s['ack_records_per_s']:,.0f} ({s['ack_mb_per_s']}) | {s['first_post_to_all_loaded_s']} s | "
                   f"{lat['p50']} / {lat['p99']} / {lat['max']} ms | {s['rejected']:,} | {s['peak_rss_mib']:.0f} MiB | "
                   f"{s['gateway_cpu_s']} s ({s['gateway_cpu_s'] * 1e6 / s['records']:.1f}) | {steps(s)} |")
    return "\n".join(out)


def chart(r, path):
    s1 = r["scenario_1"]
    names = ["library limit", "snowgate e2e", "snowgate ack"]
    values = [r["library_limit_rows_per_s"], s1["end_to_end_records_per_s"], s1["ack_records_per_s"]]
    b = r.get("baselines", {})
    if b:
        names += ["pandas", "executemany", "row by row"]
        values += [b["pandas_rows_per_s"], b["duckdb_executemany_rows_per_s"], b["duckdb_row_by_row_rows_per_s"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names[::-1], values[::-1], color="#3b7dd8")
    left.set_xscale("log")
    left.set_xlabel("records per second (log scale)")
    left.set_title(f"Scenario 1: {r['records']:,} loan records")
    keys = [k for k in ["scenario_1", "scenario_2", "scenario_3"] if k in r]
    for i, key in enumerate(keys):
        lat = r[key]["ack_latency_ms"]
        right.bar([i * 4, i * 4 + 1, i * 4 + 2], [lat["p50"], lat["p99"], lat["max"]], color=["#6aa84f", "#f1c232", "#cc0000"])
    right.set_xticks([1 + 4 * i for i in range(len(keys))], [k.replace("_", " ") for k in keys])
    right.set_ylabel("ack latency, ms (p50, p99, max)")
    right.set_title("Acknowledgement latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    results_path, markdown_path, png_path, command = sys.argv[1:5]
    r = json.load(open(results_path))
    m = r["machine"]
    section = "\n".join([
        START,
        f"Measured by `{command}` ({m['profile']} build) on {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB; load generator and gateway on the same machine, one run: "
        f"{r['records']:,} records, {r['ndjson_mb']:.0f} MB of NDJSON.",
        "",
        table(r),
        "",
        scenarios(r),
        "",
        f"![throughput and latency]({png_path.split('/')[-1]})",
        END,
    ])
    try:
        text = open(markdown_path).read()
    except FileNotFoundError:
        text = f"# Benchmarks\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    open(markdown_path, "w").write(before + section + after)
    chart(r, png_path)


if __name__ == "__main__":
    main()
