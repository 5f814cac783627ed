"""The training program: a plain command, config in, adapter out. Knows nothing of HTTP, Celery or the database."""
