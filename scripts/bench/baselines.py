"""The seed's ways of loading, timed on the load generator's NDJSON file.

Prints one JSON object: rows per second of
- pandas: json.loads per line -> pandas DataFrame -> Parquet (gzip), in 100K-row chunks, as the
  seed's write_pandas job prepared its files (without its upload and COPY);
- executemany and row-by-row INSERT into an embedded DuckDB table of the same columns, on the
  first EXECUTEMANY_ROWS and ROW_BY_ROW_ROWS records (extrapolated: rows per second do not
  depend on how many there are).
"""

import json
import sys
import tempfile
import time

import duckdb
import pandas as pd

CHUNK = 100_000
EXECUTEMANY_ROWS = 50_000
ROW_BY_ROW_ROWS = 5_000
COLUMNS = [
    "id", "partner_id", "borrower_id", "loan_type", "amount", "currency", "interest_rate",
    "tenure_months", "status", "is_first_loan", "city", "created_at", "disbursed_on", "emi",
]
DDL = """CREATE TABLE loans (id BIGINT NOT NULL, partner_id VARCHAR, borrower_id VARCHAR,
    loan_type VARCHAR, amount DECIMAL(12,2), currency VARCHAR, interest_rate DECIMAL(5,2),
    tenure_months BIGINT, status VARCHAR, is_first_loan BOOLEAN, city VARCHAR,
    created_at TIMESTAMPTZ, disbursed_on DATE, emi DECIMAL(12,2))"""


def pandas_pipeline(path, out_dir):
    started = time.perf_counter()
    rows, chunk, part = 0, [], 0
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            chunk.append(json.loads(line))
            if len(chunk) == CHUNK:
                pd.DataFrame(chunk).to_parquet(f"{out_dir}/part-{part}.parquet", compression="gzip")
                rows, chunk, part = rows + len(chunk), [], part + 1
    if chunk:
        pd.DataFrame(chunk).to_parquet(f"{out_dir}/part-{part}.parquet", compression="gzip")
        rows += len(chunk)
    return rows / (time.perf_counter() - started)


def tuples(path, limit):
    out = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            out.append(tuple(record.get(c) for c in COLUMNS))
            if len(out) == limit:
                break
    return out


def duckdb_inserts(path):
    insert = f"INSERT INTO loans VALUES ({', '.join('?' for _ in COLUMNS)})"
    figures = {}
    for name, limit in (("executemany", EXECUTEMANY_ROWS), ("row_by_row", ROW_BY_ROW_ROWS)):
        rows = tuples(path, limit)
        conn = duckdb.connect()
        conn.execute(DDL)
        started = time.perf_counter()
        if name == "executemany":
            conn.executemany(insert, rows)
        else:
            for row in rows:
                conn.execute(insert, row)
        figures[f"duckdb_{name}_rows_per_s"] = len(rows) / (time.perf_counter() - started)
        figures[f"duckdb_{name}_rows_timed"] = len(rows)
        conn.close()
    return figures


def main():
    path = sys.argv[1]
    with tempfile.TemporaryDirectory() as out_dir:
        figures = {"pandas_rows_per_s": pandas_pipeline(path, out_dir)}
    figures.update(duckdb_inserts(path))
    print(json.dumps({k: round(v) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
