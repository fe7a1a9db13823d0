//! Go RE2 regex syntax to Rust `regex` syntax, for rules imported from Gitleaks files.
//!
//! Owns only the rewrite of pattern text; compiling and judging matches is the rule and engine's.
//! The differences that change what matches (checked against Gitleaks 8.30.1's default config):
//! - Go's `\w \d \s \b` and their negations are ASCII; Rust's are Unicode. They become explicit ASCII
//!   classes (`\s` is `[\t\n\f\r ]` in Go: no `\v`), which also keeps `[\w-]{50,1000}` far below the
//!   compiled-size limit that its Unicode form exceeds.
//! - Go reads a `{` that does not start `{n}`, `{n,}` or `{n,m}` as a literal; Rust refuses it.
//! - Go's `\Q…\E` quotes a literal; Rust has no such syntax.
//! - Inside a class Go reads `[` (other than `[:name:]`), `&&` and `~~` as literals; Rust reads
//!   nested classes and set operations (`--` is left alone: in Go it is usually a range).

const WORD: &str = "0-9A-Za-z_";
const DIGIT: &str = "0-9";
const SPACE: &str = r"\t\n\x0C\r ";

/// Rewrites a Go RE2 pattern into an equivalent Rust `regex` pattern.
pub fn translate(go: &str) -> String {
    let chars: Vec<char> = go.chars().collect();
    let mut out = String::with_capacity(go.len() + 32);
    let mut i = 0;
    // Inside `[...]`: where the class's items began (after `[` and an optional `^`).
    let mut class_items_from: Option<usize> = None;
    while i < chars.len() {
        let c = chars[i];
        match (c, class_items_from) {
            ('\\', _) if chars.get(i + 1) == Some(&'Q') => {
                let body_start = i + 2;
                let end = find_from(&chars, body_start, &['\\', 'E']).unwrap_or(chars.len());
                let literal: String = chars[body_start..end].iter().collect();
                if class_items_from.is_some() {
                    for ch in literal.chars() {
                        push_class_literal(&mut out, ch);
                    }
                } else {
                    out.push_str(&regex_syntax::escape(&literal));
                }
                i = (end + 2).min(chars.len());
                continue;
            }
            ('\\', _) => {
                match chars.get(i + 1) {
                    Some(&c) => match perl_class(c, class_items_from.is_some()) {
                        Some(replacement) => out.push_str(&replacement),
                        None => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    None => out.push('\\'),
                }
                i += 2;
                continue;
            }
            ('[', None) => {
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` first in a class is a literal in both dialects.
                if chars.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
                class_items_from = Some(i);
                continue;
            }
            ('[', Some(_)) if chars.get(i + 1) == Some(&':') => {
                // A POSIX class `[:alnum:]` (ASCII in both dialects) is copied through its `:]`.
                let end = find_from(&chars, i + 2, &[':', ']']).map_or(chars.len(), |e| e + 2);
                out.extend(&chars[i..end]);
                i = end;
                continue;
            }
            (']', Some(_)) => {
                out.push(']');
                class_items_from = None;
            }
            ('[' | '&' | '~', Some(_)) => push_class_literal(&mut out, c),
            ('{', None) if !starts_repetition(&chars[i..]) => out.push_str(r"\{"),
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Go's ASCII meaning of `\c` for a Perl class or word boundary, inside a bracketed class or out.
fn perl_class(c: char, in_class: bool) -> Option<String> {
    let (set, negated) = match c {
        'w' | 'W' => (WORD, c == 'W'),
        'd' | 'D' => (DIGIT, c == 'D'),
        's' | 'S' => (SPACE, c == 'S'),
        'b' | 'B' if !in_class => return Some(format!(r"(?-u:\{c})")),
        _ => return None,
    };
    Some(match (in_class, negated) {
        (true, false) => set.to_owned(),
        (_, true) => format!("[^{set}]"),
        (false, false) => format!("[{set}]"),
    })
}

fn push_class_literal(out: &mut String, c: char) {
    if c.is_ascii_punctuation() {
        out.push('\\');
    }
    out.push(c);
}

fn find_from(chars: &[char], from: usize, needle: &[char]) -> Option<usize> {
    (from..chars.len()).find(|&i| chars[i..].starts_with(needle))
}

/// `{n}`, `{n,}` or `{n,m}` at the start of `rest`.
fn starts_repetition(rest: &[char]) -> bool {
    let mut i = 1;
    let digits = |i: &mut usize| {
        let from = *i;
        while rest.get(*i).is_some_and(|c| c.is_ascii_digit()) {
            *i += 1;
        }
        *i > from
    };
    if !digits(&mut i) {
        return false;
    }
    if rest.get(i) == Some(&',') {
        i += 1;
        digits(&mut i);
    }
    rest.get(i) == Some(&'}')
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn matches(go: &str, text: &str) -> bool {
        regex_automata::meta::Regex::new(&translate(go))
            .unwrap_or_else(|e| panic!("{go:?} -> {:?}: {e}", translate(go)))
            .is_match(text)
    }

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        assert!(matches(r"^\w+$", "abc_09"));
        assert!(!matches(r"^\w+$", "héllo"));
        assert!(!matches(r"^\d$", "٣"));
        assert!(!matches(r"^\s$", "\u{0B}"));
        assert!(matches(r"^\s$", "\u{0C}"));
        assert!(matches(r"^[\w.-]+$", "a.b-c"));
        assert!(!matches(r"^[\w.-]+$", "é"));
        assert!(matches(r"^\W$", "é"));
        assert!(matches(r"^[\S]+$", "ab"));
        assert!(!matches(r"^[\S]+$", "a b"));
        // Go's \b sees only ASCII word bytes: é is not one.
        assert!(!matches(r"é\b", "é "));
        assert!(matches(r"a\bé", "aé"));
    }

    #[test]
    fn literal_braces_and_quotes() {
        assert!(matches(r"^\$(?:\d+|{\d+})$", "${12}"));
        assert!(matches(r"^\${(?:[A-Z_]+|[a-z_]+)}$", "${HOME}"));
        assert!(matches(r"a{2}", "aa") && !matches(r"^a{2}$", "a{2}"));
        assert!(matches(r"^x{,3}$", "x{,3}"));
        assert!(matches(r"^\Qa.b*\E$", "a.b*") && !matches(r"^\Qa.b*\E$", "axb"));
        assert!(matches(r"^[\Q]-\E]+$", "]-]"));
    }

    #[test]
    fn class_punctuation_is_literal() {
        assert!(matches(r"^[a[b]+$", "a[b"));
        assert!(matches(r"^[a&&b]+$", "&a"));
        assert!(matches(r"^[~~x]+$", "~x"));
        assert!(matches(r"^[[:alnum:]]+$", "aZ9"));
        assert!(matches(r"^[]a]+$", "]a"));
        assert!(matches(r"^[^]a]+$", "bc"));
    }
}
