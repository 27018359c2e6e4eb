"""IAM in the local AWS emulator, closer to AWS than moto's own.

moto (started with authorisation on) checks every request's signature and its caller's
identity policies, but for most services it asks about the resource "*", so a policy that
names its table, secret or distribution is refused everything, and one that grants "*"
passes everything. This module makes each request ask about the resources AWS authorises:

- DynamoDB: the table (`table/NAME`) or the index (`table/NAME/index/INDEX`); a
  TransactWriteItems is authorised item by item as PutItem, UpdateItem, DeleteItem and
  ConditionCheckItem, as AWS does (there is no TransactWriteItems permission).
- Secrets Manager: the secret's ARN (with its random suffix).
- CloudFront: the distribution; EC2: instances and launch templates for the actions that
  take them; SES: the sending identity (the address, or its domain).
- S3: presigned URLs are authorised as their signer (moto fails them with a 500), and a
  HeadObject of a version needs s3:GetObjectVersion.

It also makes the administrator that tests and `conveyor dev` set things up with (tables,
buckets, roles): an IAM user whose policy allows everything, with its keys written to a file.

Used by moto_serial.py when CONVEYOR_IAM is set.
"""

import json
import re
from urllib.parse import urlparse

from moto import settings
from werkzeug.exceptions import HTTPException
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import IAMRequest, S3IAMRequest

ACCOUNT = "123456789012"
ADMIN = "conveyor-admin"


def _json_body(handler):
    body = getattr(handler, "body", None)
    if isinstance(body, dict):
        return body
    try:
        return json.loads(handler.raw_body or b"{}")
    except (ValueError, TypeError):
        return {}


def _query(handler, name):
    values = handler.querystring.get(name) or []
    return values[0] if values else None


def _numbered(handler, prefix):
    return [values[0] for key, values in sorted(handler.querystring.items()) if re.fullmatch(rf"{prefix}\.\d+", key)]


def _dynamodb_checks(handler, action):
    region, account = handler.region, handler.current_account
    body = _json_body(handler)

    def table(name, index=None):
        arn = f"arn:aws:dynamodb:{region}:{account}:table/{name}"
        return f"{arn}/index/{index}" if index else arn

    if action == "TransactWriteItems":
        names = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem"}
        checks = []
        for item in body.get("TransactItems", []):
            for kind, operation in names.items():
                if kind in item:
                    checks.append((operation, table(item[kind].get("TableName", ""))))
        return checks
    if action == "TransactGetItems":
        return [("GetItem", table(item.get("Get", {}).get("TableName", ""))) for item in body.get("TransactItems", [])]
    if action in ("BatchWriteItem", "BatchGetItem"):
        return [(action, table(name)) for name in body.get("RequestItems", {})]
    if "TableName" in body:
        return [(action, table(body["TableName"], body.get("IndexName")))]
    return [(action, "*")]


def _secret_checks(handler, action):
    from moto.secretsmanager.models import secretsmanager_backends

    body = _json_body(handler)
    secret_id = body.get("SecretId") or body.get("Name")
    if not secret_id:
        return [(action, "*")]
    backend = secretsmanager_backends[handler.current_account][handler.region]
    try:
        arn = backend.describe_secret(secret_id).arn
    except Exception:  # a missing secret: AWS authorises the name it was asked for
        arn = secret_id if secret_id.startswith("arn:") else (
            f"arn:aws:secretsmanager:{handler.region}:{handler.current_account}:secret:{secret_id}"
        )
    return [(action, arn)]


def _cloudfront_checks(handler, action):
    match = re.search(r"/distribution/([^/?]+)", urlparse(handler.uri).path)
    if match:
        return [(action, f"arn:aws:cloudfront::{handler.current_account}:distribution/{match.group(1)}")]
    return [(action, "*")]


def _ec2_checks(handler, action):
    region, account = handler.region, handler.current_account
    if action in ("RebootInstances", "StartInstances", "StopInstances", "TerminateInstances"):
        return [(action, f"arn:aws:ec2:{region}:{account}:instance/{i}") for i in _numbered(handler, "InstanceId")]
    if action in ("CreateLaunchTemplateVersion", "ModifyLaunchTemplate", "DeleteLaunchTemplate"):
        template = _query(handler, "LaunchTemplateId")
        name = _query(handler, "LaunchTemplateName")
        if not template and name:
            from moto.ec2.models import ec2_backends

            try:
                template = ec2_backends[account][region].get_launch_template_by_name(name).id
            except Exception:
                template = name
        return [(action, f"arn:aws:ec2:{region}:{account}:launch-template/{template}")]
    return [(action, "*")]


def _ses_identity(handler):
    """The identity SES authorises a send against: the address's own when it is verified,
    else its domain's."""
    from moto.ses.models import ses_backends

    source = _query(handler, "Source") or ""
    address = source.rsplit("<", 1)[-1].rstrip(">").strip()
    identity = address
    try:
        verified = ses_backends[handler.current_account][handler.region].email_identities
    except Exception:
        verified = []
    if address not in verified and "@" in address:
        identity = address.split("@", 1)[1]
    return f"arn:aws:ses:{handler.region}:{handler.current_account}:identity/{identity}"


def _checks(handler, action):
    service = getattr(handler, "service_name", "")
    if service == "dynamodb":
        return _dynamodb_checks(handler, action)
    if service == "secretsmanager":
        return _secret_checks(handler, action)
    if service == "cloudfront":
        return _cloudfront_checks(handler, action)
    if service == "ec2":
        return _ec2_checks(handler, action)
    return None


def _authorize(handler, request_cls, checks):
    """Checks the signature once, then that the caller may do every (action, resource)."""
    parsed_url = urlparse(handler.uri)
    path = handler.raw_path + (f"?{parsed_url.query}" if parsed_url.query else "")
    # A bodiless request is signed over an empty payload; moto's parsed parameters (path
    # parameters of a GET, say) would change the hash it computes.
    data = handler.data if (handler.raw_body or handler.method in ("POST", "PUT")) else {}
    for position, (action, resource) in enumerate(checks):
        request = request_cls(
            account_id=handler.current_account,
            method=handler.method,
            path=path,
            data=data,
            body=handler.raw_body,
            headers=handler.headers,
            action=action,
        )
        # A Query API form (EC2, SES) reaches moto already parsed, and moto checks the
        # signature over its own re-encoding of it, which differs from the SDK's for some
        # characters: such a request is authenticated by its key and token only.
        form_post = handler.method == "POST" and not handler.raw_body
        if position == 0 and not form_post:
            request.check_signature()
        request.check_action_permitted(resource)


class Denied(HTTPException):
    """A refusal in the shape the service's protocol has, so the SDK reads its code (moto
    answers every service in one XML shape, which JSON and Query clients cannot parse)."""

    def __init__(self, service, arn, action):
        super().__init__()
        message = f"User: {arn} is not authorized to perform: {action}"
        if service in ("dynamodb", "secretsmanager"):
            self.code, self.content_type = 400, "application/x-amz-json-1.0"
            kind = "AccessDeniedException"
            self.description = json.dumps({"__type": f"com.amazonaws.{service}#{kind}", "message": message})
        elif service == "ec2":
            self.code, self.content_type = 403, "text/xml"
            self.description = (
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>UnauthorizedOperation</Code>"
                f"<Message>{message}</Message></Error></Errors><RequestID>denied</RequestID></Response>"
            )
        else:
            self.code, self.content_type = 403, "text/xml"
            self.description = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
                f"<Message>{message}</Message></Error><RequestId>denied</RequestId></ErrorResponse>"
            )

    def get_body(self, *args, **kwargs):
        return self.description

    def get_headers(self, *args, **kwargs):
        return [("Content-Type", self.content_type)]


def _refuse_as_aws(handler, attempt):
    """Runs `attempt`; moto's AccessDenied becomes the service's own refusal."""
    from moto.core.exceptions import AccessDeniedError

    try:
        attempt()
    except AccessDeniedError as refusal:
        arn, action = "unknown", handler._get_action()
        match = re.search(r"User: (\S+) is not authorized to perform: (\S+)", refusal.message)
        if match:
            arn, action = match.group(1), match.group(2)
        raise Denied(getattr(handler, "service_name", ""), arn, action) from None


_moto_normal_action = ActionAuthenticatorMixin._authenticate_and_authorize_normal_action


def _normal_action(self, resource="*"):
    if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
        return _moto_normal_action(self, resource)
    _refuse_as_aws(self, lambda: _normal_checks(self, resource))
    return None


def _normal_checks(self, resource):
    action = self._get_action()
    if getattr(self, "service_name", "") == "ses" and action in ("SendEmail", "SendRawEmail"):
        _authorize(self, IAMRequest, [(action, _ses_identity(self))])
        return
    checks = _checks(self, action)
    if checks is None:
        _moto_normal_action(self, resource)
        return
    _authorize(self, IAMRequest, checks or [(action, "*")])


_moto_s3_action = ActionAuthenticatorMixin._authenticate_and_authorize_s3_action


def _s3_request(handler, action, headers=None, path=None):
    """An S3 authorisation request for `action` by the caller of `handler`'s request."""
    return S3IAMRequest(
        account_id=handler.current_account,
        method=handler.method,
        path=path or handler.raw_path,
        data=handler.data,
        body=handler.raw_body,
        headers=headers or handler.headers,
        action=action,
    )


def _s3_action(self, bucket_name=None, key_name=None):
    if (
        ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        and "Authorization" not in self.headers
    ):
        credential = _query(self, "X-Amz-Credential")
        if not credential and _query(self, "AWSAccessKeyId"):
            credential = f"{_query(self, 'AWSAccessKeyId')}/00000000/{self.region}/s3/aws4_request"
        if credential:
            # A presigned URL: authorised as the identity that signed it (the signature
            # itself is checked by moto's S3 backend where it can).
            headers = dict(self.headers)
            headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature=presigned"
            token = _query(self, "X-Amz-Security-Token")
            if token:
                headers["X-Amz-Security-Token"] = token
            arn = f"{bucket_name or '*'}/{key_name}" if key_name else (bucket_name or "*")
            _s3_request(self, self._get_action(), headers=headers).check_action_permitted(f"arn:aws:s3:::{arn}")
            return None
    if (
        ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT
        and key_name is None
        and bucket_name
        and self.data.get("Action") == "DeleteObject"
    ):
        # DeleteObjects: AWS authorises s3:DeleteObject on each key, not on the bucket.
        import xmltodict

        body = xmltodict.parse(self.body, strip_whitespace=False)
        objects = body.get("Delete", {}).get("Object", [])
        objects = objects if isinstance(objects, list) else [objects]
        parsed_url = urlparse(self.uri)
        path = self.raw_path + (f"?{parsed_url.query}" if parsed_url.query else "")
        for position, listed in enumerate(objects):
            request = _s3_request(self, "DeleteObject", path=path)
            if position == 0:
                request.check_signature()
            request.check_action_permitted(f"arn:aws:s3:::{bucket_name}/{listed.get('Key', '')}")
        return None
    _moto_s3_action(self, bucket_name, key_name)
    source = self.headers.get("x-amz-copy-source")
    if source and ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT:
        # CopyObject also reads its source: s3:GetObject on it, as AWS asks.
        from urllib.parse import unquote

        source = unquote(source.split("?", 1)[0]).lstrip("/")
        _s3_request(self, "GetObject").check_action_permitted(f"arn:aws:s3:::{source}")
    return None


def install():
    """Patches moto's authorisation (before the server takes requests)."""
    ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = _normal_action
    ActionAuthenticatorMixin._authenticate_and_authorize_s3_action = _s3_action
    from moto.s3 import responses as s3_responses

    s3_responses.ACTION_MAP["KEY"]["HEAD"]["versionId"] = "GetObjectVersion"


def enforce(keys_path):
    """Makes the administrator, writes its keys to `keys_path` and turns authorisation on."""
    from moto.iam.models import iam_backends

    iam = iam_backends[ACCOUNT]["aws"]
    iam.create_user(region_name="us-east-1", user_name=ADMIN)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(ADMIN, "everything", json.dumps(policy))
    key = iam.create_access_key(ADMIN)
    with open(keys_path, "w") as f:
        json.dump({"AccessKeyId": key.access_key_id, "SecretAccessKey": key.secret_access_key}, f)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
