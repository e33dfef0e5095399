"""Harnesses shared by the benchmarks and the tests (the tests may import bench/, never the reverse)."""
