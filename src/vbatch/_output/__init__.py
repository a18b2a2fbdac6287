"""The output side: result lines, the crash-safe writer, job state and resume, Parquet."""
