#!/usr/bin/env python3
"""Recall per token format and findings beyond the planted tokens.

    recall.py PLANTED_JSON SPILLWAY_JSON CORPUS_DIR

A plant counts as found when spillway reported, in that file (an archive member counts for its
archive), a secret of that rule that is contained in the planted example, as written or with its
string escapes decoded (a PEM key inside a JSON example is reported with real line breaks). Recall is also given per
encoding (plain, base64, escape, zip). Findings not explained by any plant are "beyond" (real secrets in the corpus,
or false positives), listed per rule.
"""
import collections, json, os, sys

planted = json.load(open(sys.argv[1]))
found = json.load(open(sys.argv[2]))
corpus = sys.argv[3]
by_file = collections.defaultdict(list)
for f in found:
    by_file[os.path.basename(f["path"].split("!")[0])].append(f)
per_rule = collections.defaultdict(lambda: [0, 0])
per_encoding = collections.defaultdict(lambda: [0, 0])
explained = set()
def spellings(example):
    out = [example]
    try:
        out.append(example.encode("utf-8").decode("unicode_escape"))
    except UnicodeDecodeError:
        pass
    return out

for p in planted:
    enc = p.get("encoding", "plain")
    p["spellings"] = spellings(p["example"])
    per_rule[p["rule_id"]][1] += 1
    per_encoding[enc][1] += 1
    for i, f in enumerate(by_file.get(p["file"], [])):
        if (p["file"], i) not in explained and f["rule_id"] == p["rule_id"] and any(f["secret"] in e for e in p["spellings"]):
            per_rule[p["rule_id"]][0] += 1
            per_encoding[enc][0] += 1
            explained.add((p["file"], i))
            break
hits = sum(v[0] for v in per_rule.values())
total = sum(v[1] for v in per_rule.values())
missed = {r: v for r, v in per_rule.items() if v[0] < v[1]}
beyond = collections.Counter(f["rule_id"] for name, fs in by_file.items() for i, f in enumerate(fs)
                             if (name, i) not in explained and not any(f["secret"] in e for p in planted for e in p["spellings"]))
print(f"recall: {hits}/{total} planted tokens found across {len(per_rule)} rules; by encoding: "
      + ", ".join(f"{e} {h}/{t}" for e, (h, t) in sorted(per_encoding.items())))
for r, (h, t) in sorted(missed.items()):
    print(f"  missed {r}: {h}/{t}")
print(f"beyond planted: {sum(beyond.values())} findings" + (": " + ", ".join(f"{r}={n}" for r, n in beyond.most_common()) if beyond else ""))
