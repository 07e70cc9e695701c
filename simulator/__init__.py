"""A model backend simulator: OpenAI-shaped answers with configurable timing, capacity and failures.

It stands in for a GPU server in the dev stack, tests and benchmarks; it is never a real model.
"""
