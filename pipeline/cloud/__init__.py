"""The S3 deployment: storage client, page counting, the shard plan, markers, the shard runner,
status and preflight."""
