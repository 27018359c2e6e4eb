"""The local AWS emulator (moto), answering one request at a time.

moto's threaded server is not atomic across concurrent requests: two TransactWriteItems
calls can both pass their conditions and both write, which DynamoDB never allows. Served
one at a time, every API call is atomic, as in AWS; concurrency between Conveyor's own
requests (read, decide, conditional write) is unchanged.

Usage: python moto_serial.py HOST PORT
"""

import os
import sys

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
os.environ.setdefault("MOTO_PORT", str(port))
app = DomainDispatcherApplication(create_backend_app)
run_simple(host, port, app, threaded=False, use_reloader=False, request_handler=MotoRequestHandler)
