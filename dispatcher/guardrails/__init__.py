"""Guardrails: offline detectors for PII, prompt injection and content categories; masking for whole
texts and for streams. Pure functions and small classes, no I/O. The ingress applies the input side
before a request is queued; workers apply the output side to what the backend answers, so sync,
streamed, async and batch answers are all covered in one place."""
