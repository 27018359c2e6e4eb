"""The local AWS emulator (moto), answering one request at a time.

moto's threaded server is not atomic across concurrent requests: two TransactWriteItems
calls can both pass their conditions and both write, which DynamoDB never allows. Served
one at a time, every API call is atomic, as in AWS; concurrency between Conveyor's own
requests (read, decide, conditional write) is unchanged.

With CONVEYOR_IAM=<file>, IAM is enforced as in AWS (see moto_iam.py): every request must
be signed by a known identity whose policies allow it, and the administrator's keys are
written to <file> for the set-up (tables, buckets, roles) of tests and `conveyor dev`.

What else DynamoDB does and moto does not (idempotent transaction tokens) is in
moto_fidelity.py.

Usage: python moto_serial.py HOST PORT
"""

import os
import sys

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moto_fidelity  # noqa: E402

moto_fidelity.install()
keys = os.environ.get("CONVEYOR_IAM")
if keys:
    import moto_iam

    moto_iam.install()
    moto_iam.enforce(keys)
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, use_reloader=False, request_handler=MotoRequestHandler)
