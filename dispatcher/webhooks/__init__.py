"""Task webhooks: who may be called (addresses), how a delivery is signed, sent and retried."""
