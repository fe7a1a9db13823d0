//! Percent-encoding. In a form body (`application/x-www-form-urlencoded`: Twilio's `Body=`, GitHub's
//! `payload=`) every value is decoded, `+` is a space and `&` separates fields; in any other text only
//! the URL-like runs that hold a `%XX` are decoded, and `+` stays itself (it is literal outside a
//! query, and a token written in base64 keeps it).

use memchr::memchr;

use super::span_map::ViewBuilder;

/// How far a URL-like run is followed either side of a `%XX`.
const MAX_RUN: usize = 64 << 10;

fn hex_pair(s: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(*s.first()?)? * 16 + digit(*s.get(1)?)?) as u8)
}

/// Bytes that can stand in a URL as written in text: visible ASCII except quotes, angle brackets
/// and backslash (which end a URL in code, markup and JSON).
fn url_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'`' | b'<' | b'>' | b'\\')
}

/// Appends the whole buffer read as a form body to `out`, which stays empty when decoding changes
/// nothing.
pub fn decode_form(buf: &[u8], out: &mut ViewBuilder) {
    if !buf.iter().any(|&b| b == b'+' || b == b'%') {
        return;
    }
    let mut copied = 0;
    let mut i = 0;
    while i < buf.len() {
        let decoded = match buf[i] {
            b'+' => Some((1, b' ')),
            b'&' => Some((1, b'\n')),
            b'%' => hex_pair(&buf[i + 1..]).map(|b| (3, b)),
            _ => None,
        };
        match decoded {
            Some((len, byte)) => {
                out.literal(buf, copied..i);
                out.atomic(i..i + len, &[byte]);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.literal(buf, copied..buf.len());
}

/// Appends every URL-like run of `buf` that holds a `%XX` and is at least `shortest` bytes long,
/// decoded, to `out` (which stays empty when there is none); `percents` are where the percent signs
/// of `buf` are, in order.
pub fn decode(
    buf: &[u8],
    percents: impl Iterator<Item = usize>,
    shortest: usize,
    out: &mut ViewBuilder,
) {
    let mut pos = 0;
    for at in percents {
        if at < pos {
            continue;
        }
        if hex_pair(&buf[at + 1..]).is_none() {
            pos = at + 1;
            continue;
        }
        let floor = pos.max(at.saturating_sub(MAX_RUN));
        let start = buf[floor..at]
            .iter()
            .rposition(|&b| !url_byte(b))
            .map_or(floor, |p| floor + p + 1);
        let limit = buf.len().min(at + MAX_RUN);
        let end = buf[at..limit]
            .iter()
            .position(|&b| !url_byte(b))
            .map_or(limit, |p| at + p);
        if end - start < shortest {
            // Decodes to fewer bytes than any match takes (`%02x` in a format string).
            pos = end.max(at + 1);
            continue;
        }
        if !out.is_empty() {
            out.separator(start);
        }
        let mut copied = start;
        let mut j = start;
        while let Some(k) = memchr(b'%', &buf[j..end]) {
            let p = j + k;
            match hex_pair(&buf[p + 1..end]) {
                Some(byte) => {
                    out.literal(buf, copied..p);
                    out.atomic(p..p + 3, &[byte]);
                    j = p + 3;
                    copied = j;
                }
                None => j = p + 1,
            }
        }
        out.literal(buf, copied..end);
        pos = end.max(at + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::super::marks::Marks;
    use super::*;

    fn text(v: Option<ViewBuilder>) -> Option<String> {
        v.map(|v| String::from_utf8_lossy(&v.finish().0).into_owned())
    }

    /// The URL runs' view, found as the scanner finds them.
    fn url(buf: &[u8], out: &mut ViewBuilder) {
        url_at_least(buf, 0, out);
    }

    /// [`url`] leaving out runs shorter than `shortest` bytes.
    fn url_at_least(buf: &[u8], shortest: usize, out: &mut ViewBuilder) {
        let mut marks = Marks::default();
        marks.find(buf);
        decode(buf, marks.percents(), shortest, out);
    }

    fn with(decoder: fn(&[u8], &mut ViewBuilder), buf: &[u8]) -> Option<ViewBuilder> {
        let mut v = ViewBuilder::default();
        decoder(buf, &mut v);
        (!v.is_empty()).then_some(v)
    }

    #[test]
    fn form_bodies_decode_every_value() {
        assert_eq!(
            text(with(decode_form, b"Body=line%0Aghp_x+y&From=%2B1555")).unwrap(),
            "Body=line\nghp_x y\nFrom=+1555"
        );
        assert_eq!(text(with(decode_form, b"a=b&c=d")), None);
    }

    #[test]
    fn only_url_runs_with_escapes_decode_and_plus_stays() {
        assert_eq!(
            text(with(
                url,
                b"see \"https://x.test/?t=a%20ghp_1+2\" and 100% sure"
            ))
            .unwrap(),
            "https://x.test/?t=a ghp_1+2"
        );
        assert_eq!(text(with(url, b"printf(\"%s\", x)")), None);
        assert_eq!(text(with(url, b"%")), None);
        assert_eq!(text(with(url, b"%4")), None);
    }

    #[test]
    fn runs_shorter_than_any_match_are_left_out() {
        let buf = b"printf(\"%02x\"); see \"https://x.test/a%20b\"";
        let runs = |shortest| {
            let mut v = ViewBuilder::default();
            url_at_least(buf, shortest, &mut v);
            text((!v.is_empty()).then_some(v))
        };
        assert_eq!(runs(0).unwrap(), "\u{2}x\nhttps://x.test/a b");
        // `%02x` is four bytes: the run is left out from a shortest match of five.
        assert_eq!(runs(4).unwrap(), "\u{2}x\nhttps://x.test/a b");
        assert_eq!(runs(5).unwrap(), "https://x.test/a b");
        // The URL is 20 bytes.
        assert_eq!(runs(20).unwrap(), "https://x.test/a b");
        assert_eq!(runs(21), None);
    }

    #[test]
    fn spans_map_back_over_whole_escapes() {
        let raw = b"u=%67hp_abc";
        let (bytes, map) = with(url, raw).unwrap().finish();
        assert_eq!(bytes, b"u=ghp_abc");
        assert_eq!(&raw[map.to_raw(2..9)], b"%67hp_abc");
    }
}
