"""Spark-to-MDS conversion. pyspark is imported only inside this package."""
