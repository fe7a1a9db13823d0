#!/usr/bin/env python3
"""Plants format-valid synthetic tokens into a corpus and writes the ground truth.

    plant.py CORPUS_DIR PATTERNS_DIR OUT_JSON [--per-rule N] [--seed S]

Each rule's `examples` (synthetic, validated by the rule tests) are the tokens: every example of every
rule is planted N times (default 3), each into a different randomly chosen file, each time in a randomly chosen context
(.env assignment, JSON value, YAML value, shell export, source string). The ground truth lists
(file, rule id, token type, the secret's line) per plant; the secret text itself is recovered by
scanning the example alone, so this script needs no regex engine: it stores the example's index.

Then, for every rule with a one-line example, that example is planted three more times, encoded as
senders and deployments encode it: base64 in a Kubernetes Secret's `data:` (`"encoding": "base64"`),
after a JSON string escape (`"escape"`), and in a zip archive of its own, `enc-N.zip!config/app.env`
line 1 (`"zip"`, with `"member"` and `"line"`: the ground truth inside the archive).
"""
import base64, io, json, os, random, sys, tomllib, zipfile

def default_rules(patterns):
    """Every rule of the default rule files (patterns/*.toml), file by file in name order."""
    for name in sorted(os.listdir(patterns)):
        if name.endswith(".toml"):
            with open(os.path.join(patterns, name), "rb") as f:
                yield from tomllib.load(f).get("rules", [])


def main():
    corpus, patterns, out = sys.argv[1:4]
    per_rule = int(sys.argv[sys.argv.index("--per-rule") + 1]) if "--per-rule" in sys.argv else 3
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    rng = random.Random(seed)
    files = sorted(os.listdir(corpus))
    contexts = [
        lambda ex: f"API_KEY={ex}\n",
        lambda ex: '{"key": ' + json.dumps(ex) + "}\n",
        lambda ex: f"key: {ex}\n",
        lambda ex: f"export API_KEY='{ex}'\n",
        lambda ex: f'    let key = "{ex}";\n',
    ]
    truth = []
    # Each plant goes to a different file, so no plant lands inside another (a PEM block, say).
    targets = iter(rng.sample(files, len(files)))
    for rule in default_rules(patterns):
            for i, ex in enumerate(rule["examples"]):
                for _ in range(per_rule):
                    target = next(targets)
                    path = os.path.join(corpus, target)
                    with open(path, "rb") as f:
                        data = f.read()
                    # Insert at a line boundary so the planted text stays on its own lines.
                    cut = data.rfind(b"\n", 0, rng.randrange(len(data) + 1)) + 1
                    text = ex if "\n" in ex else rng.choice(contexts)(ex)
                    if not text.endswith("\n"):
                        text += "\n"
                    with open(path, "wb") as f:
                        f.write(data[:cut] + b"\n" + text.encode() + data[cut:])
                    truth.append({"file": target, "rule_id": rule["id"], "token_type": rule["token_type"], "text": text,
                                  "example": ex})
    # Encoded plants.
    encoded = 0
    for rule in default_rules(patterns):
            ex = next((e for e in rule["examples"] if "\n" not in e), None)
            if ex is None:
                continue
            base = {"rule_id": rule["id"], "token_type": rule["token_type"], "example": ex}
            for encoding in ("base64", "escape"):
                target = next(targets)
                path = os.path.join(corpus, target)
                with open(path, "rb") as f:
                    data = f.read()
                cut = data.rfind(b"\n", 0, rng.randrange(len(data) + 1)) + 1
                if encoding == "base64":
                    text = "  token: " + base64.b64encode(f"API_KEY={ex}\n".encode()).decode() + "\n"
                else:
                    text = '{"config": ' + json.dumps("[main]\n" + ex) + "}\n"
                with open(path, "wb") as f:
                    f.write(data[:cut] + b"\n" + text.encode() + data[cut:])
                truth.append({"file": target, "text": text, "encoding": encoding, **base})
                encoded += 1
            archive = f"enc-{encoded:04d}.zip"
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("config/app.env", f"API_KEY={ex}\n")
            with open(os.path.join(corpus, archive), "wb") as f:
                f.write(buf.getvalue())
            truth.append({"file": archive, "text": f"API_KEY={ex}\n", "encoding": "zip",
                          "member": "config/app.env", "line": 1, **base})
            encoded += 1
    with open(out, "w") as f:
        json.dump(truth, f)
    print(f"planted {len(truth)} tokens ({encoded} of them encoded; {len({t['rule_id'] for t in truth})} rules) into {corpus}")

main()
