"""LocalStack's runtime (``python -m localstack.runtime.main``) with its S3 object files in this instance's home.

LocalStack keeps S3 object data in a fixed ``/tmp/localstack-s3-storage/<bucket>/``
shared by every instance on the machine, and deleting a bucket removes that directory.
The test instance (``make test-localstack``) deletes every bucket before each test, so
it would pull the files out from under the instance you use when both have a bucket of
the same name. ``DROPBATCH_LOCALSTACK_S3_DIR`` (set by start.sh) gives each instance its own.
"""

import os

import localstack.services.s3.provider as s3_provider  # read when the S3 provider is built, after this
from localstack.runtime.main import main

s3_provider.DEFAULT_S3_TMP_DIR = os.environ["DROPBATCH_LOCALSTACK_S3_DIR"]
main()
