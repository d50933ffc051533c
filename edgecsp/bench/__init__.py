"""Benchmarking: an MLPerf-style measurement loop, memory and memory-bandwidth figures, reports,
a history database and the regression check the nightly jobs run.

Modules (each importable alone; heavy libraries are imported inside functions):
  harness     warm-up, then at least ``duration_s`` and ``min_queries``; latency and throughput scenarios
  memory      peak resident memory over a window, artifact size, backend-reported memory
  bandwidth   the platform's measured peak (STREAM-style copy/triad, matmul per precision), cached per machine
  traffic     the model's memory traffic per frame from its graph (weights + CIO activations) and MACs
  counters    measured memory-controller traffic: tegrastats EMC on Jetson, perf uncore IMC on Linux
  baselines   PyTorch eager FP32 and plain ONNX Runtime FP32 runners on the same model
  run         one benchmark of an artifact (+ baselines): the library behind ``python -m edgecsp.benchmark``
  report      terminal table, JSON, CSV and PNG plots
  accuracy    AP/AP50 of an artifact against the FP32 PyTorch reference, with the profile's tolerance
  history     results of every run in a SQLAlchemy database (SQLite by default)
  regression  current results against the median of the last runs on the same device
  suite       nightly suite files (benchmarks/nightly.toml)
  nightly     the nightly matrix: build or reuse, evaluate, benchmark, record, compare, report
"""
