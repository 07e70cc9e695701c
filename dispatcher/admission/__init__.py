"""Admission: the one path every request takes before it reaches the bus (see pipeline.py)."""
