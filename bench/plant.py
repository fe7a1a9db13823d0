#!/usr/bin/env python3
"""Plants format-valid synthetic tokens into a corpus and writes the ground truth.

    plant.py CORPUS_DIR PATTERNS_DIR OUT_JSON [--per-rule N] [--seed S]

Each rule's `examples` (synthetic, validated by the rule tests) are the tokens: every example of every
rule is planted N times (default 3), each into a different randomly chosen file, each time in a randomly chosen context
(.env assignment, JSON value, YAML value, shell export, source string). The ground truth lists
(file, rule id, token type, the secret's line) per plant; the secret text itself is recovered by
scanning the example alone, so this script needs no regex engine: it stores the example's index.
"""
import json, os, random, sys, tomllib

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
    for name in sorted(os.listdir(patterns)):
        if not name.endswith(".toml"):
            continue
        with open(os.path.join(patterns, name), "rb") as f:
            rules = tomllib.load(f).get("rules", [])
        for rule in rules:
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
    with open(out, "w") as f:
        json.dump(truth, f)
    print(f"planted {len(truth)} tokens ({len({t['rule_id'] for t in truth})} rules) into {corpus}")

main()
