//! The lines a unified-diff patch adds, as one buffer to scan and a map back to the new file's
//! line numbers. GitHub's `patch` field is the hunks only (`@@ -a,b +c,d @@` onwards), without
//! file headers.
//!
//! Pure: no I/O, nothing of the crate.

/// Added lines joined with `\n`, and for each of them its 1-based line in the new file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Added {
    pub text: Vec<u8>,
    pub lines: Vec<usize>,
}

impl Added {
    /// The new file's line for the buffer's 1-based `line` (as the scanner reports it).
    pub fn file_line(&self, line: usize) -> Option<usize> {
        line.checked_sub(1).and_then(|i| self.lines.get(i)).copied()
    }
}

/// Parses `patch`. Lines before the first hunk header, and hunk headers it cannot read, make
/// the lines after them unnumbered until the next readable header; they are still scanned.
pub fn added_lines(patch: &str) -> Added {
    let mut added = Added::default();
    let mut next_line: Option<usize> = None;
    for raw in patch.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with("@@") {
            next_line = new_start(line);
        } else if let Some(content) = line.strip_prefix('+') {
            if !added.lines.is_empty() {
                added.text.push(b'\n');
            }
            added.text.extend_from_slice(content.as_bytes());
            added.lines.push(next_line.unwrap_or(0));
            next_line = next_line.map(|n| n + 1);
        } else if line.starts_with(' ') || line.is_empty() {
            next_line = next_line.map(|n| n + 1);
        }
        // '-' (removed) and '\' ("No newline at end of file") leave the new file's count alone.
    }
    added
}

/// `c` of `@@ -a,b +c,d @@ ...`.
fn new_start(header: &str) -> Option<usize> {
    let plus = header.split(' ').find(|part| part.starts_with('+'))?;
    plus[1..].split(',').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_lines_keep_their_new_file_numbers() {
        let patch = "@@ -1,3 +1,4 @@\n keep\n-old\n+new one\n+new two\n context\n@@ -40,2 +41,3 @@ fn x()\n a\n+third\n\\ No newline at end of file";
        let added = added_lines(patch);
        assert_eq!(added.text, b"new one\nnew two\nthird");
        assert_eq!(added.lines, vec![2, 3, 42]);
        assert_eq!(added.file_line(3), Some(42));
        assert_eq!(added.file_line(0), None);
        assert_eq!(added.file_line(4), None);
    }

    #[test]
    fn a_new_file_is_all_added() {
        let added = added_lines("@@ -0,0 +1,2 @@\n+a=1\n+b=2\n");
        assert_eq!(added.text, b"a=1\nb=2");
        assert_eq!(added.lines, vec![1, 2]);
    }

    #[test]
    fn an_unreadable_header_leaves_lines_unnumbered_but_scanned() {
        let added = added_lines("@@ garbage @@\n+secret\n");
        assert_eq!(added.text, b"secret");
        assert_eq!(added.lines, vec![0]);
    }
}
