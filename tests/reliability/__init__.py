"""Reliability and security: bad files, fuzzed parsers, streaming faults, signals and a short soak."""
