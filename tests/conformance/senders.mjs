// Drives a real `spillway serve` with the senders' own npm code:
// - @octokit/webhooks-methods `sign` (GitHub's webhook signature, X-Hub-Signature-256), for a JSON
//   body and for GitHub's form mode (`payload=` holding the JSON);
// - twilio `getExpectedTwilioSignature` (form parameters with a repeated value, given as an array)
//   and `validateRequestWithBody`'s JSON scheme (URL with bodySHA256);
// - standardwebhooks `Webhook.sign`.
// Configuration from the environment (tests/it/conformance.rs). Prints one JSON summary line per
// group; exits 1 on any failure.
import { createHash } from "node:crypto";
import { sign, verify } from "@octokit/webhooks-methods";
import twilio from "twilio";
import { Webhook } from "standardwebhooks";

const TOKENS = (process.env.TOKENS || "").split(",");
let ok = true;

function group(name) {
  const g = { name, passed: [], failed: [] };
  g.check = (label, pass, detail = "") => (pass ? g.passed : g.failed).push(pass ? label : `${label}: ${detail}`);
  g.report = () => {
    console.log(JSON.stringify({ group: name, passed: g.passed, failed: g.failed }));
    ok &&= g.failed.length === 0;
  };
  return g;
}

async function post(url, body, headers) {
  const resp = await fetch(url, { method: "POST", body, headers });
  return [resp.status, await resp.text()];
}

const found = (text) => {
  try { return JSON.parse(text).tokens_found; } catch { return undefined; }
};

{
  const g = group("@octokit/webhooks-methods");
  const url = process.env.HMAC_URL, secret = process.env.HMAC_SECRET;
  const body = JSON.stringify({ ref: "refs/heads/main", head_commit: { message: `add config\n${TOKENS[5]}` } });
  const signature = await sign(secret, body);
  g.check("the library verifies what it signed", await verify(secret, body, signature));
  let [status, text] = await post(url, body, { "content-type": "application/json", "x-hub-signature-256": signature, "x-github-event": "push", "x-github-delivery": "d1" });
  g.check("json payload accepted", status === 200, `${status} ${text}`);
  g.check("json payload: token seen after the JSON escape", found(text) === 1, text);
  const form = new URLSearchParams({ payload: JSON.stringify({ head_commit: { message: `x\n${TOKENS[6]}` } }) }).toString();
  [status, text] = await post(url, form, { "content-type": "application/x-www-form-urlencoded", "x-hub-signature-256": await sign(secret, form), "x-github-event": "push" });
  g.check("form payload= accepted", status === 200, `${status} ${text}`);
  g.check("form payload=: token seen through the form and the JSON escape", found(text) === 1, text);
  [status, text] = await post(url, body + " ", { "content-type": "application/json", "x-hub-signature-256": signature });
  g.check("a tampered body is refused", status === 401, `${status} ${text}`);
  g.report();
}

{
  const g = group("twilio (npm)");
  const publicUrl = process.env.TWILIO_PUBLIC_URL, target = process.env.TWILIO_URL, authToken = process.env.TWILIO_TOKEN;
  const params = { Body: `deploy key\n${TOKENS[7]}`, MessageSid: "SM0100", MediaUrl0: ["https://api.twilio.com/m/2", "https://api.twilio.com/m/2"] };
  const form = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) for (const x of [].concat(v)) form.append(k, x);
  const signature = twilio.getExpectedTwilioSignature(authToken, publicUrl, params);
  g.check("the library validates what it signed", twilio.validateRequest(authToken, signature, publicUrl, params));
  let [status, text] = await post(target, form.toString(), { "content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature });
  g.check("form with a repeated value accepted", status === 200, `${status} ${text}`);
  g.check("form: token seen after %0A", found(text) === 1, text);
  const body = JSON.stringify({ MessageSid: "SM0101", Body: `x\n${TOKENS[8]}` });
  const query = `?bodySHA256=${createHash("sha256").update(body).digest("hex")}`;
  const jsonSignature = twilio.getExpectedTwilioSignature(authToken, publicUrl + query, {});
  g.check("the library validates the JSON request", twilio.validateRequestWithBody(authToken, jsonSignature, publicUrl + query, body));
  [status, text] = await post(target + query, body, { "content-type": "application/json", "x-twilio-signature": jsonSignature });
  g.check("json with bodySHA256 accepted", status === 200, `${status} ${text}`);
  g.report();
}

{
  const g = group("standardwebhooks (npm)");
  const wh = new Webhook(process.env.SW_SECRET);
  const body = JSON.stringify({ type: "secret.created", data: { value: `\t${TOKENS[9]}` } });
  const now = new Date();
  const [status, text] = await post(process.env.SW_URL, body, {
    "content-type": "application/json",
    "webhook-id": "msg_npm_1",
    "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": wh.sign("msg_npm_1", now, body),
  });
  g.check("signed message accepted", status === 200, `${status} ${text}`);
  g.check("token seen after the JSON escape", found(text) === 1, text);
  g.report();
}

process.exit(ok ? 0 : 1);
