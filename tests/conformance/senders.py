"""Drives a real `spillway serve` with the senders' own Python code.

- Standard Webhooks: PyPI `standardwebhooks` (the project's own library) signs; Spillway must accept
  its signatures with every secret form the library takes, deduplicate by webhook-id, refuse tampering.
- Twilio: PyPI `twilio` `RequestValidator.compute_signature` signs form bodies (with the default
  port in the URL, and a repeated identical value) and JSON bodies (URL with bodySHA256).
- GitLab: a step-by-step replica of `Security::TokenRevocationService#execute`
  (ee/app/services/security/token_revocation_service.rb) and of the type naming in
  `ScanSecurityReportSecretsWorker#revocation_type`, plus the documented example body of
  doc/development/sec/token_revocation_api.md.
- `installation` mode: an installation that verifies every call Spillway makes with
  `standardwebhooks.Webhook.verify`, answering the installation contract.

Configuration comes from the environment (set by tests/it/conformance.rs). Prints one JSON summary
line per group on stdout: {"group": ..., "passed": [...], "failed": [...]}; exits 1 on any failure.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKENS = os.environ.get("TOKENS", "").split(",")


class Group:
    def __init__(self, name):
        self.name, self.passed, self.failed = name, [], []

    def check(self, label, ok, detail=""):
        (self.passed if ok else self.failed).append(label if ok else f"{label}: {detail}")

    def report(self):
        print(json.dumps({"group": self.name, "passed": self.passed, "failed": self.failed}), flush=True)
        return not self.failed


def post(url, body, headers):
    data = body if isinstance(body, bytes) else body.encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(url, headers):
    req = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def standard_webhooks():
    from standardwebhooks import Webhook

    g = Group("standardwebhooks")
    token = TOKENS[0]
    body = json.dumps({"type": "config.changed", "data": {"value": f"line one\n{token}"}})
    for label, url, secret in [
        ("whsec_ secret", os.environ["SW_URL"], os.environ["SW_SECRET"]),
        ("bare base64 secret", os.environ["SW_BARE_URL"], os.environ["SW_BARE_SECRET"]),
    ]:
        wh = Webhook(secret)
        now = datetime.now(tz=timezone.utc)
        msg_id = "msg_" + label.split()[0]

        def send(msg_id, data, when):
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(when.timestamp())),
                "webhook-signature": wh.sign(msg_id, when, data),
            }
            return post(url, data, headers)

        status, text = send(msg_id, body, now)
        g.check(f"{label}: signed message accepted", status == 200, f"{status} {text}")
        first = json.loads(text) if status == 200 else None
        g.check(f"{label}: token seen after the JSON escape", bool(first) and first.get("tokens_found") == 1, text)
        status, text = send(msg_id, body, datetime.now(tz=timezone.utc))
        g.check(f"{label}: retry with the same webhook-id gets the same answer",
                status == 200 and json.loads(text) == first, f"{status} {text}")
        status, text = send(msg_id + "_new", body, now)
        g.check(f"{label}: a new webhook-id is a new message", status == 200, f"{status} {text}")
        headers = {
            "content-type": "application/json",
            "webhook-id": "msg_tampered",
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": wh.sign("msg_tampered", now, body),
        }
        status, text = post(url, body.replace("line one", "line 1"), headers)
        g.check(f"{label}: a tampered body is refused", status == 401, f"{status} {text}")
        old = datetime.fromtimestamp(time.time() - 600, tz=timezone.utc)
        status, text = send("msg_old", body, old)
        g.check(f"{label}: a timestamp outside the tolerance is refused", status == 401, f"{status} {text}")
    return g.report()


class MultiValues(dict):
    """Form parameters with repeated keys, read as Flask's MultiDict is (getall)."""

    def getall(self, name):
        return self[name]


def twilio():
    from urllib.parse import urlencode, urlsplit, urlunsplit

    from twilio.request_validator import RequestValidator

    g = Group("twilio")
    # Twilio signs the public URL it was configured with; the request itself goes to serve directly.
    url, target = os.environ["TWILIO_PUBLIC_URL"], os.environ["TWILIO_URL"]
    validator = RequestValidator(os.environ["TWILIO_TOKEN"])
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    # Twilio's back ends sign the configured URL with or without the default port.
    with_default_port = urlunsplit(parts._replace(netloc=f"{host}:{default_port}"))
    token = TOKENS[1]
    params = MultiValues(
        Body=[f"deploy key\n{token}"],
        MessageSid=["SM0001"],
        MediaUrl0=["https://api.twilio.com/m/1", "https://api.twilio.com/m/1"],
    )
    form = urlencode([(k, v) for k, vs in params.items() for v in vs])
    for label, signed_url in [("url as configured", url), ("url with the default port", with_default_port)]:
        sig = validator.compute_signature(signed_url, params)
        status, text = post(target, form, {"X-Twilio-Signature": sig, "content-type": "application/x-www-form-urlencoded"})
        g.check(f"form, {label}, repeated value: accepted", status == 200, f"{status} {text}")
        g.check(f"form, {label}: token seen after %0A", status == 200 and json.loads(text).get("tokens_found") == 1, text)
    status, text = post(target, form, {"X-Twilio-Signature": "bm9wZQ==", "content-type": "application/x-www-form-urlencoded"})
    g.check("form: a wrong signature is refused", status == 401, f"{status} {text}")

    body = json.dumps({"MessageSid": "SM0002", "Body": f"x\n{TOKENS[2]}"})
    query = f"?bodySHA256={validator.compute_hash(body)}"
    json_url = url + query
    sig = validator.compute_signature(json_url, {})
    g.check("json: the library itself validates what it signed", validator.validate(json_url, body, sig))
    status, text = post(target + query, body, {"X-Twilio-Signature": sig, "content-type": "application/json"})
    g.check("json with bodySHA256: accepted", status == 200, f"{status} {text}")
    status, text = post(target + query, body.replace("SM0002", "SM0003"), {"X-Twilio-Signature": sig, "content-type": "application/json"})
    g.check("json with bodySHA256: a body that does not hash to it is refused", status == 401, f"{status} {text}")
    return g.report()


def gitlab_revocation_type(identifier):
    # ScanSecurityReportSecretsWorker#revocation_type
    return (identifier["external_type"] + "_" + identifier["external_id"].replace(" ", "_")).lower()


GLPAT_KEY_TYPE = "gitleaks_rule_id_gitlab_personal_access_token"


def gitlab_client(revocable_keys, types_url, revoke_url, api_token):
    """Security::TokenRevocationService#execute, step by step. Returns (status, detail, sent keys)."""
    glpats = [k for k in revocable_keys if k["type"] == GLPAT_KEY_TYPE]
    keys = [k for k in revocable_keys if k["type"] != GLPAT_KEY_TYPE]
    del glpats  # revoked inside GitLab (revoke_glpats), never sent
    if not keys:
        return "success", "nothing to send", []
    if not (revoke_url and types_url and api_token):
        return "error", "Missing revocation token data", []
    headers = {"Content-Type": "application/json", "Authorization": api_token}
    status, text = get(types_url, headers)
    if not 200 <= status < 300:
        return "error", "Failed to get revocation token types", []
    token_types = json.loads(text)["types"]
    if not token_types:
        return "success", "unsupported: no types", []
    keys = [k for k in keys if k["type"] in token_types]
    if not keys:
        return "success", "unsupported: every type filtered out", []
    status, text = post(revoke_url, json.dumps(keys), headers)
    if not 200 <= status < 300:
        return "error", f"Failed to revoke tokens: {status} {text}", keys
    return "success", str(status), keys


def gitlab():
    g = Group("gitlab")
    base, secret = os.environ["GITLAB_BASE"], os.environ["GITLAB_SECRET"]
    types_url, revoke_url = f"{base}/v1/revocable_token_types", f"{base}/v1/revoke_tokens"

    status, text = get(types_url, {"Content-Type": "application/json"})
    g.check("types without the secret: 401", status == 401, f"{status} {text}")
    status, text = get(types_url, {"Content-Type": "application/json", "Authorization": secret})
    types = json.loads(text).get("types", []) if status == 200 else []
    g.check("types: a list of strings", status == 200 and types and all(isinstance(t, str) for t in types), text[:200])

    def finding(external_id, token):
        identifier = {"external_type": "gitleaks_rule_id", "external_id": external_id}
        return {"type": gitlab_revocation_type(identifier), "token": token,
                "location": "https://gitlab.example/group/project/-/blob/abc123/config.yml#L3",
                "vulnerability": None}

    keys = [
        finding("Github Personal Access Token", TOKENS[3]),  # the ID in GitLab's current table
        finding("GitHub Personal Access Token", TOKENS[4]),  # the 17.x spelling
        finding("AWS", os.environ["AWS_KEY_ID"]),
        finding("AdafruitIOKey", "0123456789abcdef0123456789abcdef"),  # no Spillway type: filtered out
        finding("gitlab_personal_access_token", "glpat-" + "x" * 20),  # revoked inside GitLab
    ]
    outcome, detail, sent = gitlab_client(keys, types_url, revoke_url, secret)
    g.check("client: revoke_tokens called and answered 2xx", outcome == "success" and detail == "204", detail)
    g.check("client: GitHub and AWS tokens sent, the unsupported one filtered out",
            sorted(k["type"] for k in sent) == sorted([
                "gitleaks_rule_id_github_personal_access_token",
                "gitleaks_rule_id_github_personal_access_token",
                "gitleaks_rule_id_aws"]), str([k["type"] for k in sent]))
    outcome, detail, _ = gitlab_client(keys, types_url, revoke_url, "wrong-secret")
    g.check("client with a wrong secret: fails at the types call", outcome == "error" and "types" in detail, detail)

    example = [
        {"type": "gitleaks_rule_id_gitlab_personal_access_token", "token": "glpat--8GMtG8Mf4EnMJzmAWDU",
         "location": "https://example.com/some-repo/blob/abcdefghijklmnop/compromisedfile1.java"},
        {"type": "gitleaks_rule_id_gitlab_personal_access_token", "token": "glpat--tG84EGK33nMLLDE70zU",
         "location": "https://example.com/some-repo/blob/abcdefghijklmnop/compromisedfile2.java"},
    ]
    status, text = post(revoke_url, json.dumps(example), {"Content-Type": "application/json", "Authorization": secret})
    g.check("documented example body: 204", status == 204, f"{status} {text}")
    status, text = post(revoke_url, json.dumps([{"type": "gitleaks_rule_id_nope", "token": "abc"}]),
                        {"Content-Type": "application/json", "Authorization": secret})
    g.check("unsupported type: 400 naming it", status == 400 and "gitleaks_rule_id_nope" in text, f"{status} {text}")
    return g.report()


def installation():
    """Serves the installation contract, verifying every call with standardwebhooks.Webhook."""
    from standardwebhooks import Webhook

    wh = Webhook(os.environ["INSTALLATION_SECRET"])
    record = os.environ["INSTALLATION_RECORD"]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                wh.verify(body, dict(self.headers.items()))
                verified = True
            except Exception as e:  # noqa: BLE001 - recorded, answered 401
                verified = repr(e)
            with open(record, "a") as f:
                f.write(json.dumps({"path": self.path, "verified": verified}) + "\n")
            if verified is not True:
                self.send_response(401)
                self.end_headers()
                return
            answer = {"/revoke": {"status": "revoked"}, "/verify": {"status": "active"}}.get(self.path, {})
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["INSTALLATION_PORT"])), Handler)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "senders"
    if mode == "installation":
        installation()
    else:
        results = [standard_webhooks(), twilio(), gitlab()]
        sys.exit(0 if all(results) else 1)
