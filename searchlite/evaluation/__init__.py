"""Metrics, dataset readers and the bench runner."""
