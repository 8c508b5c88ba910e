"""Latency: measurement, runtimes, profiles, the fitted correction and proxies."""
