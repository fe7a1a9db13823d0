//! What a rule's regex says about its keywords, for imported rules that only list them:
//! - longer keywords for one too short to prefilter on (Gitleaks' `ey`, `sk`, `s.`, `q~`): the
//!   keyword as the regex spells it, extended by the bytes the regex allows next to it;
//! - where the keywords sit in the regex ([`keyword_anchor`]): how far a match reaches before and
//!   after a keyword hit, and what must follow the keyword, so the engine searches around fewer and
//!   smaller places (Gitleaks' generic rules hang on `key`, `token`, `secret`, found everywhere).
//!
//! Owns only this reading of a rule's regex; it does not scan. Pure: no I/O.

use regex_syntax::hir::{Class, Hir, HirKind};

/// The most keywords one short keyword may turn into (each becomes a prefilter fingerprint).
const MAX_EXTENSIONS: usize = 64;

/// One position of a flattened concatenation: the (lower-cased) bytes it may hold, or `None` where
/// the regex is not a fixed sequence of single bytes (an alternation, an optional part, a wide class).
type Position = Option<Vec<u8>>;

/// Keywords at least `min` bytes long that every place the regex can match `keyword` (lower-case
/// ASCII) must hold: the keyword and its neighbouring bytes. `None` when no such place is found.
pub fn extend_short_keyword(hir: &Hir, keyword: &str, min: usize) -> Option<Vec<String>> {
    let keyword = keyword.to_ascii_lowercase().into_bytes();
    let mut found = Vec::new();
    for_each_concat(hir, &mut |positions| {
        for start in 0..positions.len() {
            if let Some(ext) = extend_at(positions, start, &keyword, min) {
                found.extend(ext);
            }
        }
    });
    found.sort();
    found.dedup();
    (!found.is_empty() && found.len() <= MAX_EXTENSIONS).then(|| {
        found
            .into_iter()
            .map(|k| String::from_utf8(k).expect("ASCII"))
            .collect()
    })
}

/// If `keyword` is spelt at `positions[start..]`, the keyword grown by neighbouring positions
/// (the narrower side first) until it is `min` bytes long.
fn extend_at(
    positions: &[Position],
    start: usize,
    keyword: &[u8],
    min: usize,
) -> Option<Vec<Vec<u8>>> {
    let end = start + keyword.len();
    let spelt = positions
        .get(start..end)?
        .iter()
        .zip(keyword)
        .all(|(p, &k)| p.as_deref() == Some(&[k][..]));
    if !spelt {
        return None;
    }
    let (mut from, mut to) = (start, end);
    let mut words = vec![keyword.to_vec()];
    while words[0].len() < min {
        let before = from.checked_sub(1).and_then(|i| positions[i].as_ref());
        let after = positions.get(to).and_then(|p| p.as_ref());
        let grow_after = match (before, after) {
            (Some(b), Some(a)) => a.len() <= b.len(),
            (None, Some(_)) => true,
            (Some(_), None) => false,
            (None, None) => return None,
        };
        let bytes = if grow_after { after? } else { before? };
        if words.len() * bytes.len() > MAX_EXTENSIONS {
            return None;
        }
        words = words
            .iter()
            .flat_map(|w| {
                bytes.iter().map(move |&b| {
                    let mut w = w.clone();
                    if grow_after {
                        w.push(b)
                    } else {
                        w.insert(0, b)
                    }
                    w
                })
            })
            .collect();
        if grow_after { to += 1 } else { from -= 1 }
    }
    Some(words)
}

/// Calls `f` with every concatenation in `hir`, flattened into positions.
fn for_each_concat(hir: &Hir, f: &mut impl FnMut(&[Position])) {
    match hir.kind() {
        HirKind::Concat(_) | HirKind::Literal(_) => {
            let mut positions = Vec::new();
            flatten(hir, &mut positions);
            f(&positions);
        }
        _ => {}
    }
    match hir.kind() {
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().for_each(|s| for_each_concat(s, f))
        }
        HirKind::Capture(c) => for_each_concat(&c.sub, f),
        HirKind::Repetition(r) => for_each_concat(&r.sub, f),
        _ => {}
    }
}

/// Appends the positions `hir` occupies: one per byte of a literal or narrow class; zero-width
/// assertions take none; anything else is one unknown position.
fn flatten(hir: &Hir, out: &mut Vec<Position>) {
    match hir.kind() {
        HirKind::Literal(lit) => {
            out.extend(lit.0.iter().map(|b| Some(vec![b.to_ascii_lowercase()])))
        }
        HirKind::Class(class) => out.push(class_bytes(class)),
        HirKind::Look(_) => {}
        HirKind::Capture(c) => flatten(&c.sub, out),
        HirKind::Concat(subs) => subs.iter().for_each(|s| flatten(s, out)),
        // `x{n,}` with n >= 1 starts with one `x`; what follows is not fixed.
        HirKind::Repetition(r) if r.min >= 1 => {
            flatten(&r.sub, out);
            out.push(None);
        }
        _ => out.push(None),
    }
}

/// The lower-cased ASCII bytes a class matches, if it matches ASCII only, or but for a few
/// case-folding lookalikes (`(?i)[a-z]` also holds the Kelvin sign and the long s; a match through
/// one of those is not worth giving up the keyword).
fn class_bytes(class: &Class) -> Position {
    let mut bytes: Vec<u8> = match class {
        Class::Unicode(c) => {
            let non_ascii: u32 = c
                .iter()
                .map(|r| u32::from(r.end()).max(0x7f) - u32::from(r.start()).max(0x7f))
                .sum();
            if non_ascii > 4 {
                return None;
            }
            c.iter()
                .filter(|r| u32::from(r.start()) <= 0x7f)
                .flat_map(|r| r.start() as u8..=(u32::from(r.end()).min(0x7f) as u8))
                .collect()
        }
        Class::Bytes(c) => c
            .iter()
            .filter(|r| r.end() <= 0x7f)
            .flat_map(|r| r.start()..=r.end())
            .collect(),
    };
    bytes.iter_mut().for_each(|b| *b = b.to_ascii_lowercase());
    bytes.sort_unstable();
    bytes.dedup();
    Some(bytes)
}

/// Where every match of a regex has a keyword: the regex is a sequence whose part `i` spells only
/// keywords. A hit there starts at most `before` bytes after the match does, the match ends at most
/// `after` bytes after the hit's end, and `follows` (when it can fail) matches right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub before: Option<usize>,
    pub after: Option<usize>,
    pub follows: Option<String>,
}

/// Most literals a keyword part may spell (more and it is not worth reading as one).
const MAX_LITERALS: usize = 64;

/// See [`Anchor`]. `keywords` are lower-case.
pub fn keyword_anchor(hir: &Hir, keywords: &[String]) -> Option<Anchor> {
    let mut parts = Vec::new();
    sequence(hir, &mut parts);
    let (i, longest) = parts.iter().enumerate().find_map(|(i, part)| {
        let lits = lowercase_literals(part)?;
        let keywords_only = !lits.is_empty()
            && lits
                .iter()
                .all(|l| keywords.iter().any(|k| k.as_bytes() == l));
        keywords_only.then(|| (i, lits.iter().map(Vec::len).max().unwrap_or(0)))
    })?;
    let max_len = |parts: &[Hir]| -> Option<usize> {
        parts
            .iter()
            .map(|p| p.properties().maximum_len())
            .sum::<Option<usize>>()
    };
    let rest = Hir::concat(parts[i + 1..].to_vec());
    let follows = (rest.properties().minimum_len().unwrap_or(0) > 0).then(|| rest.to_string());
    Some(Anchor {
        before: max_len(&parts[..i]),
        after: max_len(&parts[i + 1..]).map(|m| m + longest),
        follows,
    })
}

/// The parts of `hir` read as one sequence: groups opened, nested sequences spliced.
fn sequence(hir: &Hir, out: &mut Vec<Hir>) {
    match hir.kind() {
        HirKind::Capture(c) => sequence(&c.sub, out),
        HirKind::Concat(subs) => subs.iter().for_each(|s| sequence(s, out)),
        _ => out.push(hir.clone()),
    }
}

/// Every string `hir` can match, lower-cased, if it matches only a few ASCII strings (letters in
/// either case count as one).
fn lowercase_literals(hir: &Hir) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = match hir.kind() {
        HirKind::Literal(lit) => vec![lit.0.to_ascii_lowercase()],
        HirKind::Class(class) => match class_bytes(class)?.as_slice() {
            [one] => vec![vec![*one]],
            _ => return None,
        },
        HirKind::Capture(c) => lowercase_literals(&c.sub)?,
        HirKind::Alternation(subs) => {
            let mut all = Vec::new();
            for s in subs {
                all.extend(lowercase_literals(s)?);
            }
            all
        }
        HirKind::Concat(subs) => {
            let mut all = vec![Vec::new()];
            for s in subs {
                let next = lowercase_literals(s)?;
                if all.len() * next.len() > MAX_LITERALS {
                    return None;
                }
                all = all
                    .iter()
                    .flat_map(|a| next.iter().map(move |n| [a.as_slice(), n].concat()))
                    .collect();
            }
            all
        }
        HirKind::Repetition(r) if r.min == 0 && r.max == Some(1) => {
            let mut all = lowercase_literals(&r.sub)?;
            all.push(Vec::new());
            all
        }
        _ => return None,
    };
    out.sort();
    out.dedup();
    (out.len() <= MAX_LITERALS).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extend(regex: &str, keyword: &str) -> Option<Vec<String>> {
        extend_short_keyword(&regex_syntax::parse(regex).unwrap(), keyword, 3)
    }

    #[test]
    fn short_keywords_grow_from_their_regex() {
        // Gitleaks' twilio-api-key, jwt, vault-service-token and azure-ad-client-secret.
        let twilio = extend(r"SK[0-9a-fA-F]{32}", "sk").unwrap();
        assert_eq!(twilio.len(), 16);
        assert!(twilio.contains(&"sk0".to_string()) && twilio.contains(&"skf".to_string()));
        let jwt = extend(r"\b(ey[a-zA-Z0-9]{17,}\.ey[a-zA-Z0-9\/\\_-]{17,})", "ey").unwrap();
        assert!(
            jwt.contains(&"eyj".to_string()) && jwt.contains(&".ey".to_string()),
            "{jwt:?}"
        );
        let vault = extend(r"\b((?:hvs\.[\w-]{90,120}|s\.(?i:[a-z0-9]{24})))", "s.").unwrap();
        assert_eq!(vault.len(), 36 + 1, "{vault:?}"); // s.0..s.z and the `s.` of `hvs.`
        let azure = extend(
            r"(?:^|[\\'\x60\s>=:(,)])([a-zA-Z0-9_~.]{3}[0-9]Q~[a-zA-Z0-9_~.-]{31,34})",
            "q~",
        )
        .unwrap();
        assert_eq!(azure, (0..10).map(|d| format!("{d}q~")).collect::<Vec<_>>());
    }

    #[test]
    fn generic_rules_anchor_on_their_keywords() {
        // Gitleaks' generic-api-key, translated.
        let generic = r#"(?i)[0-9A-Za-z_.-]{0,50}?(?:access|auth|(?-i:[Aa]pi|API)|credential|creds|key|passw(?:or)?d|secret|token)(?:[ \t0-9A-Za-z_.-]{0,20})[\t\n\x0C\r '"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)[\x60'"\t\n\x0C\r =]{0,5}([0-9A-Za-z_.=-]{10,150}|[a-z0-9][a-z0-9+/]{11,}={0,3})"#;
        let keywords: Vec<String> = [
            "access",
            "api",
            "auth",
            "key",
            "credential",
            "creds",
            "passwd",
            "password",
            "secret",
            "token",
        ]
        .map(String::from)
        .to_vec();
        let hir = regex_syntax::parse(generic).unwrap();
        let anchor = keyword_anchor(&hir, &keywords).unwrap();
        // 50 characters before the keyword, up to 3 bytes each under (?i) (the Kelvin sign).
        assert_eq!((anchor.before, anchor.after), (Some(150), None));
        let follows =
            regex_automata::meta::Regex::new(&format!("^(?:{})", anchor.follows.unwrap())).unwrap();
        assert!(follows.is_match(" = 'abcdefghij0123'"));
        assert!(follows.is_match("_ID: abcdefghij0123"));
        assert!(!follows.is_match("s.iter().map(|k| k)"));
        // Without every spelling among the keywords there is no anchor.
        assert_eq!(keyword_anchor(&hir, &keywords[1..]), None);
        // A token with a prefix: nothing before it, a bounded match after.
        let aws = regex_syntax::parse(r"(?-u:\b)((?:A3T[A-Z0-9]|AKIA|ASIA)[A-Z2-7]{16})(?-u:\b)")
            .unwrap();
        let kw: Vec<String> = ["akia", "asia"].map(String::from).to_vec();
        assert_eq!(keyword_anchor(&aws, &kw), None, "a3t? is not a keyword");
        let kw: Vec<String> = ["a3t", "akia", "asia"].map(String::from).to_vec();
        assert_eq!(
            keyword_anchor(&aws, &kw),
            None,
            "A3T[A-Z0-9] spells 36 words"
        );
    }

    #[test]
    fn no_place_no_keywords() {
        assert_eq!(extend(r"[a-z]{10}", "ab"), None);
        // Too many neighbours: any byte.
        assert_eq!(extend(r"ab.", "ab"), None);
    }
}
