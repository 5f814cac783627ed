"""Celery workers: the job task supervises one training process per job."""
