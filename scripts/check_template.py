"""Offline checks of infra/template.yaml that cfn-lint and sam validate do not make.

1. Expands the SAM template with samtranslator (no AWS calls) into target/expanded.json,
   for checkov, which misses policies written inside SAM `Policies` otherwise.
2. Compares what the template wires with each function's registration (`conveyor routes`):
   the IAM actions its policy allows against the permissions its code declares (both ways),
   HTTP routes and who authorises them (API events with or without the IAM authorizer, or a
   function URL, which serves all of its function's routes), stream filters, and schedules.
   Every stream mapping must take partial batch failures (the functions report them) and
   name an on-failure destination, so the dev server and AWS can never disagree.

Usage: python check_template.py TEMPLATE ROUTES_JSON OUT_JSON
       python check_template.py --expand TEMPLATE OUT_JSON   (only step 1: what the local
       roles of tests and `make run` are made from)
"""

import json
import os
import sys

from samtranslator.model.exceptions import InvalidDocumentException
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class OfflinePolicies:
    """Stands in for the IAM lookup of AWS managed policy ARNs (no network here)."""

    def load(self):
        return {"AWSLambdaBasicExecutionRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}


def policy_actions(policies):
    """Every action the SAM `Policies` of a function allow, whichever way a condition goes."""
    actions = set()

    def statements(value):
        if isinstance(value, dict) and "Fn::If" in value:
            for branch in value["Fn::If"][1:]:
                yield from statements(branch)
        elif isinstance(value, dict) and "Effect" in value:
            yield value

    for policy in policies:
        if not isinstance(policy, dict):
            continue  # a SAM policy template or a managed policy by name: none are used
        for statement in policy.get("Statement", []):
            for allowed in statements(statement):
                if allowed.get("Effect") != "Allow":
                    continue
                listed = allowed.get("Action", [])
                actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def main(template_path, routes_path, out_path):
    with open(template_path) as f:
        template = yaml_parse(f.read())
    table = []
    if routes_path:
        with open(routes_path) as f:
            table = json.load(f)
    served = {(r["function"], r["method"], r["path"], r["auth"]) for r in table if "path" in r}
    schedules = {(r["function"], r["schedule"]) for r in table if "schedule" in r}
    declared_schedules = set()
    # Filters are compared as JSON values, so spacing does not matter.
    filters = {(r["function"], json.dumps(json.loads(r["stream_filter"]), sort_keys=True)) for r in table if "stream_filter" in r}
    declared_filters = set()

    # What each function's code needs, against what its policy allows (least privilege
    # both ways).
    needed = {r["function"]: set(r["permissions"]) for r in table if "permissions" in r}

    wired = set()
    problems = []
    for logical_id, resource in template.get("Resources", {}).items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        code_uri = resource["Properties"].get("CodeUri", "")
        parts = code_uri.split("/")
        if "lambda" not in parts:
            problems.append(f"{logical_id}: CodeUri {code_uri} is not a cargo lambda output (target/lambda/<name>/)")
            continue
        name = parts[parts.index("lambda") + 1]
        if not os.path.isdir(os.path.join(os.path.dirname(template_path), "..", "functions", name)):
            problems.append(f"{logical_id}: functions/{name} does not exist")
        if name in needed:
            allowed = policy_actions(resource["Properties"].get("Policies", []))
            for action in sorted(needed[name] - allowed):
                problems.append(f"{logical_id}: {name} calls {action}, which its policy does not allow")
            for action in sorted(allowed - needed[name]):
                problems.append(f"{logical_id}: its policy allows {action}, which {name} never calls (least privilege: remove it, or add it to the registration's permissions)")
        elif table:
            problems.append(f"{logical_id}: {name} declares no permissions in its registration")
        url = resource["Properties"].get("FunctionUrlConfig")
        if url:
            # A function URL hands every path to the function.
            auth = "iam" if url.get("AuthType") == "AWS_IAM" else "function"
            wired.update((n, m, p, auth) for (n, m, p, _) in served if n == name)
        for event_id, event in resource["Properties"].get("Events", {}).items():
            props = event.get("Properties", {})
            if event.get("Type") == "HttpApi":
                auth = "iam" if props.get("Auth", {}).get("Authorizer") == "AWS_IAM" else "function"
                wired.add((name, props["Method"].upper(), props["Path"], auth))
            if event.get("Type") == "DynamoDB":
                for f in props.get("FilterCriteria", {}).get("Filters", []):
                    declared_filters.add((name, json.dumps(json.loads(f["Pattern"]), sort_keys=True)))
                if "ReportBatchItemFailures" not in props.get("FunctionResponseTypes", []):
                    problems.append(f"{logical_id}.{event_id}: the function reports partial batch failures; set FunctionResponseTypes: [ReportBatchItemFailures] or Lambda takes a failed batch as done")
                if not props.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination"):
                    problems.append(f"{logical_id}.{event_id}: no DestinationConfig.OnFailure, so records dropped after the last retry leave no trace")
            if event.get("Type") == "Schedule":
                declared_schedules.add((name, props.get("Schedule")))
        # samtranslator needs an S3 location; the real one comes from `sam deploy`. The key
        # names the function, so the local roles (cli/src/local_iam.rs) find its policy.
        resource["Properties"]["CodeUri"] = f"s3://conveyor-placeholder/{name}.zip"

    if routes_path is None:
        # --expand: the wiring is compared by the full check only.
        served, wired, schedules, declared_schedules, filters, declared_filters = (set(),) * 6
    for route in sorted(served - wired):
        problems.append("served by %s but not in the template (or with other auth): %s %s, auth %s" % route)
    for route in sorted(wired - served):
        problems.append("in the template but not served by %s: %s %s, auth %s" % route)
    for name, rate in sorted(schedules - declared_schedules):
        problems.append(f"{name} runs on {rate} but the template does not schedule it so")
    for name, rate in sorted(declared_schedules - schedules):
        problems.append(f"the template schedules {name} on {rate}, which its registration does not declare")
    for name, pattern in sorted(filters - declared_filters):
        problems.append(f"{name} filters its stream with {pattern} but the template does not")
    for name, pattern in sorted(declared_filters - filters):
        problems.append(f"the template filters {name}'s stream with {pattern}, which the function does not")

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        expanded = transform(template, {}, OfflinePolicies())
    except InvalidDocumentException as err:
        problems.extend(str(cause) for cause in err.causes)
        expanded = None
    if expanded is not None:
        # A function URL is a resource SAM makes for its function: the function's checkov
        # skips (with their reasons) apply to it too.
        resources = expanded.get("Resources", {})
        for resource in resources.values():
            if resource.get("Type") == "AWS::Lambda::Url":
                owner = resource["Properties"].get("TargetFunctionArn", {}).get("Ref")
                # Since October 2025 a public function URL needs lambda:InvokeFunction too;
                # an older SAM transform leaves it out and the URL answers 403.
                granted = {
                    p["Properties"].get("Action")
                    for p in resources.values()
                    if p.get("Type") == "AWS::Lambda::Permission"
                    and p["Properties"].get("FunctionName", {}).get("Ref") == owner
                    and (p["Properties"].get("FunctionUrlAuthType") == "NONE" or p["Properties"].get("InvokedViaFunctionUrl"))
                }
                if resource["Properties"].get("AuthType") == "NONE" and granted != {"lambda:InvokeFunctionUrl", "lambda:InvokeFunction"}:
                    problems.append(f"{owner}: its function URL lacks the public invoke permissions (upgrade aws-sam-translator)")
                metadata = template["Resources"].get(owner, {}).get("Metadata")
                if metadata:
                    resource["Metadata"] = metadata
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        with open(out_path + ".tmp", "w") as f:
            json.dump(expanded, f, indent=1, default=str)
        os.replace(out_path + ".tmp", out_path)

    if problems:
        for problem in problems:
            print(f"template: {problem}", file=sys.stderr)
        return 1
    print(f"template: {len(wired)} routes, {len(declared_filters)} stream filters and {len(declared_schedules)} schedules match the functions; expanded to {out_path}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--expand":
        sys.exit(main(sys.argv[2], None, sys.argv[3]))
    sys.exit(main(*sys.argv[1:4]))
