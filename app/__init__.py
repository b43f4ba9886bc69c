"""The job service: a FastAPI app that validates, records and enqueues conversion jobs."""
