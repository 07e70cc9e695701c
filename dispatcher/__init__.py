"""The broker layer shared by ingress and workers: NATS topology, subjects, reply protocol."""
