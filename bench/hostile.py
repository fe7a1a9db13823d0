#!/usr/bin/env python3
"""Spillway under attack, on loopback (driven by bench/hostile, which builds and sets limits).

    hostile.py BIN [--seconds S] [--scenarios attack,outbound,fairness] [--postgres URL]

Scenarios, each against a fresh `spillway serve`:
- attack: for S seconds (default 40), 1,000 clients trickle a body (1 byte / 2 s, half to made-up
  endpoints, half to the real one with plausible signature headers), 128 send 8 MiB - 1 bytes as fast
  as they can (half made-up, half real), 500 connect and send nothing; meanwhile 20 genuine signed
  GitHub alerts arrive, one every 2 s. Reports: genuine alerts acknowledged and the slowest, serve's
  peak RSS, how long idle connections stayed open.
- outbound: an installation answers verify (and its JWKS) with 1 GiB, chunked; reports serve's peak
  RSS and what the finding recorded.
- fairness: a 100,000-token Standard Webhooks request is in flight (its tokens attributed to a
  rate-limited installation) when a genuine Foundry token arrives in a GitHub alert; reports the
  time from sending that alert to the installation recording the revocation.

Prints one `hostile <scenario> key=value ...` line per scenario.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE62 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def ghp() -> str:
    body = "".join(random.choice(BASE62.decode()) for _ in range(30))
    n, out = zlib.crc32(body.encode()), []
    for _ in range(6):
        out.append(BASE62[n % 62])
        n //= 62
    return f"ghp_{body}{bytes(reversed(out)).decode()}"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            http("GET", url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


class Serve:
    """A `spillway serve` on a fresh database in a temporary directory."""

    def __init__(self, bin_path, keys_url, database_url=None, env=None):
        self.bin, self.dir = bin_path, tempfile.mkdtemp(prefix="spillway-hostile.")
        self.public, self.admin = free_port(), free_port()
        self.env = dict(os.environ)
        self.env.update({
            "SPILLWAY_DATABASE_URL": database_url or f"sqlite://{self.dir}/spillway.db",
            "SPILLWAY_KEY_FILE": f"{self.dir}/spillway.keys",
            "SPILLWAY_AUDIT_CHECKPOINT_FILE": f"{self.dir}/audit.checkpoints",
            "SPILLWAY_LISTEN_ADDR": f"127.0.0.1:{self.public}",
            "SPILLWAY_ADMIN_ADDR": f"127.0.0.1:{self.admin}",
            "SPILLWAY_PUBLIC_URL": f"http://127.0.0.1:{self.public}",
            "SPILLWAY_GITHUB_KEYS_URL": keys_url,
            "SPILLWAY_OUTBOUND_ALLOW_HTTP": "true",
            "SPILLWAY_OUTBOUND_ALLOW_PRIVATE": "true",
            # Every client here is 127.0.0.1, as behind a load balancer: no per-address limit.
            "SPILLWAY_MAX_CONNECTIONS_PER_IP": "0",
            "SPILLWAY_LOG": "warn",
        })
        if database_url and database_url.startswith("postgres"):
            for k in ("FINGERPRINT", "SEALING", "AUDIT_SIGNING"):
                self.env[f"SPILLWAY_{k}_KEY"] = secrets.token_hex(32)
        self.env.update(env or {})
        self.proc = None

    def cli(self, *args):
        out = subprocess.run([self.bin, *args], env=self.env, cwd=self.dir, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"spillway {' '.join(args)}: {out.stderr}")
        return out.stdout

    def start(self):
        self.log = open(f"{self.dir}/serve.log", "w")
        self.proc = subprocess.Popen([self.bin, "serve"], env=self.env, cwd=self.dir,
                                     stdout=self.log, stderr=self.log)
        wait_http(f"http://127.0.0.1:{self.admin}/healthz")

    def rss_mb(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def metric(self, name):
        _, text = http("GET", f"http://127.0.0.1:{self.admin}/metrics")
        return [l for l in text.decode().splitlines() if l.startswith(name)]

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class RssSampler(threading.Thread):
    def __init__(self, serve):
        super().__init__(daemon=True)
        self.serve, self.peak, self.running = serve, 0.0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, self.serve.rss_mb())
            except OSError:
                return
            time.sleep(0.1)


def start_fake_github(bin_path):
    port = free_port()
    proc = subprocess.Popen([bin_path, "fake-github", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}"
    wait_http(f"{api}/meta/public_keys/secret_scanning")
    return proc, api


def signed(api, body: bytes):
    _, answer = http("POST", f"{api}/sign", body)
    s = json.loads(answer)
    return {"Github-Public-Key-Identifier": s["key_identifier"],
            "Github-Public-Key-Signature": s["signature"],
            "Content-Type": "application/json"}


# ---- attack ----------------------------------------------------------------------------------

async def slow_client(host, port, paths, stop, opened):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened[0] += 1
        path = random.choice(paths)
        try:
            writer.write((f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 8388607\r\n"
                          "Github-Public-Key-Identifier: k\r\nGithub-Public-Key-Signature: AAAA\r\n"
                          "Content-Type: application/json\r\n\r\n").encode())
            await writer.drain()
            while not stop.is_set():
                writer.write(b"[")
                await writer.drain()
                try:
                    await asyncio.wait_for(reader.read(1), 2.0)
                    break  # answered or closed: start over
                except asyncio.TimeoutError:
                    pass
        except (OSError, ConnectionError):
            pass
        writer.close()


async def big_client(host, port, paths, stop, sent):
    chunk = b" " * (1 << 20)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            writer.write((f"POST {random.choice(paths)} HTTP/1.1\r\nHost: x\r\nContent-Length: {8 * (1 << 20) - 1}\r\n"
                          "Github-Public-Key-Identifier: k\r\nGithub-Public-Key-Signature: AAAA\r\n\r\n").encode())
            for i in range(8):
                writer.write(chunk if i < 7 else chunk[:-1])
                await writer.drain()
                sent[0] += len(chunk)
            await asyncio.wait_for(reader.read(256), 30)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        writer.close()


async def idle_client(host, port, stop, closed_after):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        started = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(1), 1.0)
                    if not data:
                        closed_after.append(time.monotonic() - started)
                        break
                except asyncio.TimeoutError:
                    if time.monotonic() - started > 60:
                        closed_after.append(60.0)
                        break
        except (OSError, ConnectionError):
            closed_after.append(time.monotonic() - started)
        writer.close()


def genuine_alerts(api, endpoint, count, every, latencies, failures):
    for i in range(count):
        time.sleep(every)
        body = json.dumps([{"token": ghp(), "type": "github_personal_access_token",
                            "url": f"https://github.com/o/r/blob/{i}/f", "source": "content"}]).encode()
        headers = signed(api, body)
        started = time.monotonic()
        try:
            status, _ = http("POST", endpoint, body, headers, timeout=30)
        except OSError as e:
            status = str(e)
        latencies.append(time.monotonic() - started)
        if status != 200:
            failures.append(status)


def scenario_attack(bin_path, seconds, database_url):
    fake, api = start_fake_github(bin_path)
    serve = Serve(bin_path, f"{api}/meta/public_keys/secret_scanning", database_url)
    endpoint = serve.cli("listener", "create", "--kind", "github").strip().splitlines()[-1]
    real_path = endpoint.split(str(serve.public), 1)[1]
    serve.start()
    sampler = RssSampler(serve)
    sampler.start()
    made_up = [f"/l/{secrets.token_urlsafe(32)}" for _ in range(50)]
    latencies, failures, closed_after = [], [], []
    opened, sent = [0], [0]
    genuine = threading.Thread(target=genuine_alerts,
                               args=(api, endpoint, 20, seconds / 20, latencies, failures))

    async def attack():
        stop = asyncio.Event()
        tasks = [asyncio.create_task(slow_client("127.0.0.1", serve.public,
                                                 made_up if i % 2 else [real_path], stop, opened))
                 for i in range(1000)]
        tasks += [asyncio.create_task(big_client("127.0.0.1", serve.public,
                                                 made_up if i % 2 else [real_path], stop, sent))
                  for i in range(128)]
        tasks += [asyncio.create_task(idle_client("127.0.0.1", serve.public, stop, closed_after))
                  for _ in range(500)]
        await asyncio.sleep(1)
        genuine.start()
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait(tasks, timeout=5)

    asyncio.run(attack())
    genuine.join()
    sampler.running = False
    peak_hwm = serve.rss_mb("VmHWM")
    refusals = " ".join(l.split("{reason=")[1].replace('"', "").replace("} ", "=")
                        for l in serve.metric("spillway_ingress_refusals_total"))
    serve.stop()
    fake.terminate()
    print(f"hostile attack seconds={seconds} genuine_acked={20 - len(failures)}/20 "
          f"slowest_ms={max(latencies) * 1000:.0f} p50_ms={sorted(latencies)[len(latencies) // 2] * 1000:.0f} "
          f"peak_rss_mb={max(peak_hwm, sampler.peak):.0f} idle_closed_max_s={max(closed_after or [0]):.1f} "
          f"idle_closes={len(closed_after)} slow_connections={opened[0]} big_body_mb_sent={sent[0] >> 20} "
          f"refusals: {refusals} failures={failures[:3]}", flush=True)


# ---- outbound --------------------------------------------------------------------------------

class Endless(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * (64 << 10)
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        try:
            for _ in range(16384):  # 1 GiB
                self.wfile.write(frame)
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", "0")))
        Endless.calls.append(self.path)
        self.answer()

    def do_GET(self):
        Endless.calls.append(self.path)
        self.answer()


Endless.calls = []


def scenario_outbound(bin_path, database_url):
    fake, api = start_fake_github(bin_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    serve = Serve(bin_path, f"{api}/meta/public_keys/secret_scanning", database_url)
    endpoint = serve.cli("listener", "create", "--kind", "github").strip().splitlines()[-1]
    serve.cli("installation", "register", "--name", "huge", "--token-type", "github_personal_access_token",
              "--token-type", "palantir_jwt", "--jwks-url", f"{base}/jwks.json",
              "--verify-url", f"{base}/verify", "--revoke-url", f"{base}/revoke")
    serve.start()
    sampler = RssSampler(serve)
    sampler.start()
    # A Foundry-shaped JWT with an unknown key id makes serve fetch the JWKS; a GitHub token is
    # verified online.
    header = base64.urlsafe_b64encode(b'{"plntr":"AAAAAAAAAAAAAAAAAAAAAA==","alg":"ES256"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(b'{"sub":"u","jti":"j","org":"o"}').rstrip(b"=").decode()
    jwt = f"{header}.{claims}.{base64.urlsafe_b64encode(os.urandom(64)).rstrip(b'=').decode()}"
    body = json.dumps([{"token": ghp(), "type": "github_personal_access_token", "url": ""},
                       {"token": jwt, "type": "palantir_jwt", "url": ""}]).encode()
    status, _ = http("POST", endpoint, body, signed(api, body))
    time.sleep(15)
    sampler.running = False
    peak = max(serve.rss_mb("VmHWM"), sampler.peak)
    calls = serve.metric("spillway_installation_calls_total")
    serve.stop()
    fake.terminate()
    server.shutdown()
    print(f"hostile outbound alert_status={status} calls_to_installation={len(Endless.calls)} "
          f"(jwks={sum(1 for c in Endless.calls if 'jwks' in c)} verify={sum(1 for c in Endless.calls if 'verify' in c)}) "
          f"peak_rss_mb={peak:.0f} spillway_calls: {' '.join(c.split('{', 1)[1] for c in calls)}", flush=True)


# ---- fairness --------------------------------------------------------------------------------

def scenario_fairness(bin_path, database_url, big):
    fake, api = start_fake_github(bin_path)
    work = tempfile.mkdtemp(prefix="spillway-hostile-ri.")
    installations = {}
    for name, rate in (("acme", 50), ("bulk", 1000)):
        port = free_port()
        proc = subprocess.Popen([bin_path, "reference-installation", "--listen", f"127.0.0.1:{port}",
                                 "--secret-file", f"{work}/{name}.whsec", "--rate-limit", str(rate),
                                 "--burst", "50"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/stats")
        installations[name] = (proc, f"http://127.0.0.1:{port}")
    serve = Serve(bin_path, f"{api}/meta/public_keys/secret_scanning", database_url)
    github = serve.cli("listener", "create", "--kind", "github").strip().splitlines()[-1]
    whsec = "whsec_" + base64.b64encode(b"fairness bench key").decode()
    with open(f"{work}/sw.secret", "w") as f:
        f.write(whsec)
    webhook = serve.cli("listener", "create", "--kind", "standard-webhooks", "--secret-file",
                        f"{work}/sw.secret").strip().splitlines()[-1]
    acme, bulk = installations["acme"][1], installations["bulk"][1]
    serve.cli("installation", "register", "--name", "acme", "--token-type", "palantir_jwt",
              "--jwks-url", f"{acme}/jwks.json", "--revoke-url", f"{acme}/revoke",
              "--rate-limit", "50", "--burst", "10", "--secret-file", f"{work}/acme.whsec")
    serve.cli("installation", "register", "--name", "bulk", "--token-type", "github_personal_access_token",
              "--revoke-url", f"{bulk}/revoke", "--rate-limit", "1000", "--burst", "50",
              "--secret-file", f"{work}/bulk.whsec")
    serve.start()
    # The huge webhook: `big` GitHub tokens, one a line, signed as Standard Webhooks.
    payload = json.dumps({"type": "audit.dump", "data": "\n".join(ghp() for _ in range(big))}).encode()
    msg_id, ts = "msg_huge", str(int(time.time()))
    key = base64.b64decode(whsec[len("whsec_"):])
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + payload, hashlib.sha256).digest()).decode()
    huge_answer = {}

    def send_huge():
        started = time.monotonic()
        huge_answer["status"], huge_answer["body"] = http(
            "POST", webhook, payload, {"webhook-id": msg_id, "webhook-timestamp": ts,
                                        "webhook-signature": f"v1,{sig}", "Content-Type": "application/json"},
            timeout=120)
        huge_answer["ack_s"] = time.monotonic() - started

    _, minted = http("POST", f"{acme}/tokens", json.dumps({"kind": "session"}).encode(),
                     {"Content-Type": "application/json"})
    token = json.loads(minted)["token"]
    token_sha = hashlib.sha256(token.encode()).hexdigest()
    sender = threading.Thread(target=send_huge)
    sender.start()
    time.sleep(1.0)  # the huge request is being read, scanned and written
    body = json.dumps([{"token": token, "type": "palantir_jwt", "url": "https://github.com/o/r"}]).encode()
    headers = signed(api, body)
    sent_at = time.monotonic()
    status, _ = http("POST", github, body, headers)
    revoked_after = None
    while time.monotonic() - sent_at < 60:
        _, revocations = http("GET", f"{acme}/revocations")
        if any(r["token_sha256"] == token_sha for r in json.loads(revocations)):
            revoked_after = time.monotonic() - sent_at
            break
        time.sleep(0.01)
    sender.join()
    _, stats = http("GET", f"{bulk}/stats")
    serve.stop()
    fake.terminate()
    for proc, _ in installations.values():
        proc.terminate()
    revoked = f"{revoked_after * 1000:.0f}" if revoked_after is not None else "never"
    print(f"hostile fairness big_tokens={big} big_status={huge_answer.get('status')} "
          f"big_ack_s={huge_answer.get('ack_s', 0):.1f} genuine_status={status} genuine_revoked_ms={revoked} "
          f"bulk_revoke_calls_meanwhile={json.loads(stats).get('revoke_calls', '?')}", flush=True)


def main():
    bin_path = sys.argv[1]
    seconds = int(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 40
    scenarios = (sys.argv[sys.argv.index("--scenarios") + 1] if "--scenarios" in sys.argv
                 else "attack,outbound,fairness").split(",")
    database_url = sys.argv[sys.argv.index("--postgres") + 1] if "--postgres" in sys.argv else None
    big = int(sys.argv[sys.argv.index("--big") + 1]) if "--big" in sys.argv else 100_000
    if "attack" in scenarios:
        scenario_attack(bin_path, seconds, database_url)
    if "outbound" in scenarios:
        scenario_outbound(bin_path, database_url)
    if "fairness" in scenarios:
        scenario_fairness(bin_path, database_url, big)


if __name__ == "__main__":
    main()
