"""The LocalStack lane (tests/localstack) runs from ``nox -s s3``, which provides LocalStack."""

collect_ignore = ["localstack"]
