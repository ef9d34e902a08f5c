"""Create the mlflow artifact bucket in MinIO if it is missing (run before ``mlflow server``).

MinIO starts with no buckets and the artifact proxy does not create one; this waits for MinIO
(up to a minute) and creates ``$MLFLOW_BUCKET`` at ``$MLFLOW_S3_ENDPOINT_URL``, with the
credentials in ``$AWS_ACCESS_KEY_ID`` / ``$AWS_SECRET_ACCESS_KEY``.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def main() -> int:
    bucket = os.environ.get("MLFLOW_BUCKET", "mlflow")
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    deadline = time.monotonic() + 60
    while True:
        try:
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if bucket not in names:
                s3.create_bucket(Bucket=bucket)
                print(f"created bucket {bucket}")
            return 0
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                print(f"ensure_bucket: MinIO not usable after 60 s: {exc}", file=sys.stderr)
                return 1
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
