"""Benchmarks: the ToyWorld case libraries (editbench, adapbench, conceptbench, imagicbench) and the scripts that print
their figures (bench_*.py, run as ``python bench/bench_<name>.py``)."""
