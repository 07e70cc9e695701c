"""Async tasks: accepted by any ingress, run by workers, recorded by the dispatcher's collector."""
