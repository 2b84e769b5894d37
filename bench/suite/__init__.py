"""The benchmarks of bench/run.sh, one module each, and what they share:

  apply.py       1. terraform apply and a no-change re-apply, per state backend
  throughput.py  2. GET throughput against nginx, audit_sync = "all", and lock cycles (wrk)
  policy.py      3. Cedar decisions per second (the cargo bench benches/policy.rs)
  servers.py     bulkhead, PostgreSQL and nginx, started for a run and stopped after it
  needs.py       the programs a run needs: found, installed with apt-get, or named
  common.py      settings, scratch directories, processes, raw results, medians and ratios

Each benchmark module has `measure` (which appends every figure to the raw results as it is
taken) and `table` (its rows of the table, from those figures)."""
