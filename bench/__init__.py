"""Benchmarks of raftsso: numbers printed and written to bench/results/, never asserted."""
