//! Masking of card-number-like digit runs (PANs) in logged URLs (PCI).
//!
//! A *digit run* is a maximal sequence of ASCII digits in which single separators (a space, a
//! dash, or a `+`, which is a space in a query string, each also percent-encoded: `%20`,
//! `%2D`, `%2B`) may stand between two digits, e.g. `4111111111111111`,
//! `5500-0000-0000-0004`, `4111 1111 1111 1111` or `4111%201111%201111%201111`. A run with 13
//! to 19 digits that passes the Luhn check is replaced, separators included, by one `*` per
//! digit except the last four, followed by those four digits: `************1111`. Runs that
//! are shorter or longer (a 12- or 20-digit order number) or fail the Luhn check are left
//! alone, except that a stretch of whole separator-delimited groups inside a run that
//! qualifies on its own is masked (the card number in `4111111111111111 2024`). A percent
//! escape is one unit: its hex digits never start or join a run.

use std::borrow::Cow;

/// Shortest card number masked.
const MIN_DIGITS: usize = 13;
/// Longest card number masked.
const MAX_DIGITS: usize = 19;

/// The length of the separator that `rest` starts with, if it starts with one that may stand
/// between two digits of one run.
fn separator_len(rest: &[u8]) -> Option<usize> {
    match rest {
        [b' ' | b'-' | b'+', ..] => Some(1),
        [b'%', b'2', b'0' | b'd' | b'D' | b'b' | b'B', ..] => Some(3),
        _ => None,
    }
}

/// The Luhn check over ASCII digits (other bytes are skipped).
pub fn luhn_valid(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.rev().filter(u8::is_ascii_digit).enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// `text` with every card-number-like digit run masked (see the module docs). Borrows when
/// nothing needs masking.
pub fn mask_pans(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    // Byte ranges to mask, in order, each with the last four digits it keeps.
    let mut spans: Vec<(usize, usize, [u8; 4], usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // A percent escape is one unit: its hex digits never start (or join) a run, so
        // `q=visa%204111111111111111` is judged on the 16 digits after `%20`.
        if bytes[i] == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            i += 3;
            continue;
        }
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        // The run's digit groups (byte range and digits), split at single separators.
        let mut groups: Vec<(usize, usize, Vec<u8>)> = Vec::new();
        let mut start = i;
        let mut digits = Vec::new();
        let mut j = i;
        loop {
            if j < bytes.len() && bytes[j].is_ascii_digit() {
                digits.push(bytes[j]);
                j += 1;
                continue;
            }
            groups.push((start, j, std::mem::take(&mut digits)));
            match separator_len(&bytes[j..]) {
                Some(len) if bytes.get(j + len).is_some_and(u8::is_ascii_digit) => {
                    j += len;
                    start = j;
                }
                _ => break,
            }
        }
        // The longest card-number-like stretch of whole groups from each group on: the whole
        // run when it qualifies, otherwise e.g. the card number in `4111111111111111 2024`.
        let mut g = 0;
        while g < groups.len() {
            let mut stretch: Vec<u8> = Vec::new();
            let mut found = None;
            for (h, group) in groups.iter().enumerate().skip(g) {
                stretch.extend_from_slice(&group.2);
                if stretch.len() > MAX_DIGITS {
                    break;
                }
                if stretch.len() >= MIN_DIGITS && luhn_valid(stretch.iter().copied()) {
                    found = Some((h, stretch.len()));
                }
            }
            match found {
                Some((h, n)) => {
                    let all: Vec<u8> = groups[g..=h].iter().flat_map(|x| x.2.clone()).collect();
                    let mut last4 = [0u8; 4];
                    last4.copy_from_slice(&all[n - 4..]);
                    spans.push((groups[g].0, groups[h].1, last4, n));
                    g = h + 1;
                }
                None => g += 1,
            }
        }
        i = j;
    }
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, last4, n) in spans {
        out.push_str(&text[copied..start]);
        out.extend(std::iter::repeat_n('*', n - 4));
        out.extend(last4.iter().map(|&b| char::from(b)));
        copied = end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prefix` followed by the digit that makes it pass the Luhn check.
    fn with_check_digit(prefix: &str) -> String {
        (b'0'..=b'9')
            .map(|d| format!("{prefix}{}", char::from(d)))
            .find(|s| luhn_valid(s.bytes()))
            .unwrap()
    }

    #[test]
    fn luhn() {
        for valid in [
            "4111111111111111",
            "5500000000000004",
            "378282246310005",
            "6011111111111117",
            "4222222222222",
            "0",
            "79927398713",
        ] {
            assert!(luhn_valid(valid.bytes()), "{valid}");
        }
        for invalid in ["4111111111111112", "5500000000000005", "79927398710", "1"] {
            assert!(!luhn_valid(invalid.bytes()), "{invalid}");
        }
    }

    #[test]
    fn masks_luhn_valid_runs_keeping_last_four() {
        assert_eq!(mask_pans("/pay/4111111111111111"), "/pay/************1111");
        assert_eq!(
            mask_pans("/pay/4111111111111111?card=5500-0000-0000-0004"),
            "/pay/************1111?card=************0004"
        );
        assert_eq!(mask_pans("4111 1111 1111 1111"), "************1111");
        // Percent-encoded separators (found in review: these were logged readable).
        assert_eq!(
            mask_pans("/a/4111%201111%201111%201111"),
            "/a/************1111"
        );
        assert_eq!(
            mask_pans("/a/5500%2D0000%2d0000%2B0004/x"),
            "/a/************0004/x"
        );
        // A separator's own digits do not count: 4111%2011 is six digits, not eight.
        assert_eq!(mask_pans("/a/4111%2011"), "/a/4111%2011");
        // Found in review: an escape just before the number used to lend it its digits.
        assert_eq!(
            mask_pans("/search?q=visa%204111111111111111"),
            "/search?q=visa%20************1111"
        );
        assert_eq!(
            mask_pans("/a/x%204111%201111%201111%201111"),
            "/a/x%20************1111"
        );
        // Extra digit groups after the number (an expiry year) do not hide it.
        assert_eq!(
            mask_pans("/p/4111111111111111%202024"),
            "/p/************1111%202024"
        );
        assert_eq!(mask_pans("4111111111111111 2024"), "************1111 2024");
        assert_eq!(mask_pans("12 4111111111111111"), "12 ************1111");
        assert_eq!(
            mask_pans("q=4111+1111+1111+1111&x=1"),
            "q=************1111&x=1"
        );
        // 13 (Visa) and 15 (Amex) and 19 digits.
        assert_eq!(mask_pans("/c/4222222222222/"), "/c/*********2222/");
        assert_eq!(mask_pans("/c/378282246310005"), "/c/***********0005");
        let nineteen = with_check_digit("601100000000000000");
        assert_eq!(nineteen.len(), 19);
        assert_eq!(
            mask_pans(&format!("/x?n={nineteen}")),
            format!("/x?n=***************{}", &nineteen[15..])
        );
        // Letters around the run do not protect it.
        assert_eq!(
            mask_pans("/id/abc4111111111111111xyz"),
            "/id/abc************1111xyz"
        );
    }

    #[test]
    fn leaves_invalid_and_out_of_range_runs() {
        for text in [
            "/pay/4111111111111112",        // Luhn fails
            "/order/411111111111",          // 12 digits
            "/order/41111111111111111113",  // 20 digits, Luhn-valid or not
            "/a/4111--1111-1111-1111",      // double separator splits the run
            "/a/4111%2F1111%2F1111%2F1111", // an encoded slash is not a separator
            "/users/42?page=3",
            "",
            "no digits at all",
        ] {
            assert_eq!(mask_pans(text), text, "{text}");
            assert!(matches!(mask_pans(text), Cow::Borrowed(_)));
        }
        // Luhn-valid runs of 12 and 20 digits are left alone too.
        for prefix in ["41111111111", "4111111111111111111"] {
            let valid = with_check_digit(prefix);
            assert!(luhn_valid(valid.bytes()));
            assert_eq!(mask_pans(&valid), valid);
            let path = format!("/order/{valid}?ref={valid}");
            assert_eq!(mask_pans(&path), path);
        }
    }

    #[test]
    fn several_pans_in_one_url() {
        assert_eq!(
            mask_pans("/a/4111111111111111/b/5500000000000004?c=378282246310005&d=12345"),
            "/a/************1111/b/************0004?c=***********0005&d=12345"
        );
        // Trailing separators are not part of the run.
        assert_eq!(
            mask_pans("4111-1111-1111-1111- 4111111111111111"),
            "************1111- ************1111"
        );
    }

    proptest::proptest! {
        /// Any text (ASCII soup around card numbers, separators, escapes, multi-byte
        /// characters): no panic, and a Luhn-valid 16-digit number placed between slashes
        /// never survives (its last four digits do).
        #[test]
        fn never_panics_and_hides_pans(
            before in "[0-9a-z %+\\-/é]{0,24}",
            after in "[0-9a-z %+\\-/é]{0,24}",
            body in "[0-9]{15}",
        ) {
            let pan = with_check_digit(&body);
            let text = format!("{before}/{pan}/{after}");
            let once = mask_pans(&text).into_owned();
            proptest::prop_assert!(!once.contains(&pan), "{} -> {}", text, once);
            proptest::prop_assert!(once.contains(&pan[12..]), "the last four stay: {}", once);
            let _ = mask_pans(&before);
        }
    }
}
