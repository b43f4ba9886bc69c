"""The conversion worker: Celery tasks and the Spark-to-MDS conversion."""
