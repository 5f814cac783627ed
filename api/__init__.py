"""The HTTP front end (FastAPI). Validates, records, enqueues and serves files; never imports torch."""
