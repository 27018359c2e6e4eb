"""`make run`'s stand-in fleet: registers instances in the local EC2 emulator, builds the demo
release artifacts, and answers each instance's local health check from the release it runs.

  demo_fleet.py instances COUNT TAG        prints the new instance ids
  demo_fleet.py artifact OUT HEALTH        writes a .tar.gz whose health.txt says HEALTH
  demo_fleet.py health PORT APP_ROOT       serves GET /<instance>/health until killed
"""

import http.server
import io
import os
import sys
import tarfile


def instances(count, tag):
    import boto3

    ec2 = boto3.client("ec2", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"])
    spec = [{"ResourceType": "instance", "Tags": [{"Key": "app", "Value": tag}]}]
    reply = ec2.run_instances(ImageId="ami-12c6146b", MinCount=count, MaxCount=count, TagSpecifications=spec)
    for instance in reply["Instances"]:
        print(instance["InstanceId"])


def artifact(out, health):
    with tarfile.open(out, "w:gz") as archive:
        for name, body in [("health.txt", health), ("conveyor-hooks.toml", '[validate]\ncommand = "test -f health.txt"\n')]:
            data = body.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def health(port, root):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            instance = self.path.strip("/").split("/")[0]
            try:
                with open(os.path.join(root, instance, "current", "health.txt")) as f:
                    ok = f.read().strip() == "ok"
            except OSError:
                ok = False
            self.send_response(200 if ok else 500)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler).serve_forever()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"instances": lambda c, t: instances(int(c), t), "artifact": artifact, "health": health}[command](*args)
