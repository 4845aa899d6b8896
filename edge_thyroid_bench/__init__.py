"""The benchmark harness of ``edge-thyroid bench``, kept out of the runtime.

* :mod:`.harness`      -- loads every configuration, interleaves them on the same frames, builds the record
* :mod:`.peers`        -- what runs: our engine and the peers (PyTorch eager, plain ONNX Runtime, OpenVINO)
* :mod:`.benchmarking` -- statistics, timers, CPU pinning, machine facts, FLOP counting, tables, plots

The runtime (:mod:`edge_thyroid`) never imports this package: its CLI command imports it when it runs
and says how to install it (``pip install 'edge-thyroid[bench]'``) when it is missing. torch is
imported here only by the PyTorch peer, when it loads.
"""
