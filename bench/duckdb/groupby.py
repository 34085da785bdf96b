"""The DuckDB peer of make bench: the same count and sum of value per key
per minute, as one batch GROUP BY over the bench's JSON lines file.

    python groupby.py LINES OUT.csv [THREADS]

Writes the cells as CSV (key,window_start_ms,count,sum) and one JSON line
of figures on stdout: records, seconds (the query, reading the file
included), threads, DuckDB's version.
"""
import json
import sys
import time

import duckdb


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: groupby.py LINES OUT.csv [THREADS]")
    lines, out = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) == 4 else 2
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    quote = lambda s: "'" + s.replace("'", "''") + "'"
    start = time.monotonic()
    con.execute(f"""
        CREATE TABLE cells AS
        SELECT key, (ts // 60000) * 60000 AS window_start, count(*) AS count, sum(value) AS sum
        FROM read_json({quote(lines)}, format = 'newline_delimited',
                       columns = {{ts: 'BIGINT', key: 'VARCHAR', value: 'BIGINT'}})
        GROUP BY ALL""")
    seconds = time.monotonic() - start
    records = con.execute("SELECT sum(count) FROM cells").fetchone()[0]
    con.execute(f"COPY cells TO {quote(out)} (HEADER false)")
    print(json.dumps({"records": int(records), "seconds": seconds, "threads": threads,
                      "version": duckdb.__version__}))


if __name__ == "__main__":
    main()
