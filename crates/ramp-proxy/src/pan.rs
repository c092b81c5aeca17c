//! Masking of card-number-like digit runs (PANs) in logged URLs and journaled text (PCI DSS
//! 3.4.1, 3.5.1).
//!
//! The text is read as a sequence of *units*, each standing for a byte range of the original
//! text:
//!
//! - a *digit*: an ASCII digit, raw or percent-encoded (`%34`), also encoded twice or three
//!   times (`%2534`, `%252534`);
//! - a *separator*: a space, a tab, `-`, `+` (a space in a query string), `.`, `/`, `_`, the
//!   no-break space U+00A0, the spaces U+2000 to U+200A, the narrow no-break space U+202F or the
//!   ideographic space U+3000; raw, or percent-encoded (the Unicode ones as their UTF-8 bytes:
//!   `%20`, `%09`, `%2D`, `%2B`, `%2E`, `%2F`, `%5F`, `%C2%A0`, `%E2%80%80` to `%E2%80%8A`,
//!   `%E2%80%AF`, `%E3%80%80`, hex digits in either case), also encoded up to three times
//!   (`%2520`, `%252D`);
//! - anything else: a letter, `%`, `*`, a comma, a colon, a zero-width space (U+200B), a
//!   percent escape left after the decodings of the reading (see below), ...
//!
//! A *digit run* is a maximal sequence of digits in which gaps of one to three separators may
//! stand between two digits, e.g. `4111111111111111`, `5500-0000-0000-0004`,
//! `4111.1111.1111.1111`, `/4111/1111/1111/1111`, `4111%201111%201111%201111`,
//! `4111--1111--1111--1111` or `%34%31%31%31...`; a gap of four or more separators ends the run,
//! and separators before its first digit or after its last are not part of it. A run with 13 to
//! 19 digits that passes the Luhn check is replaced, from its first digit to its last
//! (separators and escapes included), by one `*` per digit except the last four, followed by
//! those four digits as plain ASCII digits: `************1111`. Runs that are shorter or longer
//! (a 12- or 20-digit order number) or fail the Luhn check are left alone, except that a
//! stretch of whole separator-delimited groups inside a run that qualifies on its own is masked
//! (the card number in `4111111111111111 2024`): from the run's first group on, the longest
//! qualifying stretch that starts with the group is masked and the search goes on after it, or
//! with the next group when none does.
//!
//! The text is read at four *depths*: at depth `d` (0 to 3) it is percent-decoded `d` times (a
//! `%` not followed by two hex digits stays as it is), and a percent escape still left is one
//! unit that is neither a digit nor a separator, so its hex digits never start or join a run:
//! at depth 0 `q=visa%204111111111111111` is judged on the 16 digits after `%20` and `4111%2011`
//! has six digits, not eight; at depth 1 `%20` is a separator and `%34` a digit, at depth 2
//! `%2534` is. The deepest reading comes first, as it sees a number written with escapes whole;
//! then each shallower one that reads the text differently, around what is already masked (a
//! unit that overlaps a masked range is neither a digit nor a separator). So a run is masked
//! if it qualifies at any depth: `4111111111111111%35` is masked although decoded once it is a
//! 17-digit number. A depth is not read when the decoding before it found no escape or left
//! fewer than 13 digits; decoding never adds digits (`%34` is three bytes, two of them digits,
//! decoded one), so a text with fewer than 13 ASCII digits cannot hold a card number at any
//! depth and is returned as it is without being read (nor allocating).
//!
//! The masked text is always the original text with whole byte ranges replaced, so it stays
//! valid UTF-8.
//!
//! Because `/` and `.` separate groups, the numbers of a path such as `/2024/11/30/123456789`
//! form one run, masked when a stretch of 13 to 19 of its digits passes the Luhn check (about
//! one time in ten for each candidate stretch); a path whose numbers have fewer than 13 digits
//! in all, like `/v1/orders/2024/11/30/1234`, is never masked.

use std::borrow::Cow;

/// Shortest card number masked.
const MIN_DIGITS: usize = 13;
/// Longest card number masked.
const MAX_DIGITS: usize = 19;
/// The most separators that may stand between two digits of one run.
const MAX_GAP: usize = 3;
/// How many times the text is percent-decoded at the deepest reading.
const MAX_DEPTH: usize = 3;

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
    // Decoding never adds digits (`%34` is three bytes, two of them digits, decoded one), so
    // a text with fewer digits than a card number cannot hold one at any depth.
    let (mut digits, mut percents) = (0, 0);
    for &b in bytes {
        digits += usize::from(b.is_ascii_digit());
        percents += usize::from(b == b'%');
    }
    if digits < MIN_DIGITS {
        return Cow::Borrowed(text);
    }
    // The text decoded once, twice and three times, as long as an escape is left to decode
    // and enough digits are left for a card number.
    let mut decoded: [Option<Decoded>; MAX_DEPTH] = [None, None, None];
    decoded[0] = decode(bytes, percents);
    for depth in 1..MAX_DEPTH {
        decoded[depth] = decoded[depth - 1]
            .as_ref()
            .and_then(|layer| decode(layer, layer.percents));
    }
    // Masked byte ranges of `text`, in order and disjoint. The deepest reading first: it sees
    // a number written with escapes whole; then the shallower ones, around what is masked.
    let mut masked = Vec::new();
    for layer in decoded.iter().rev().flatten() {
        scan(layer, &mut masked);
    }
    scan(bytes, &mut masked);
    if masked.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for span in masked {
        // Spans start at a digit unit and end after one, and a digit unit is made of ASCII
        // bytes only (a digit, or `%` and hex digits), so both ends are char boundaries.
        out.push_str(&text[copied..span.start]);
        out.extend(std::iter::repeat_n('*', span.digits - 4));
        out.extend(span.last4.iter().map(|&b| char::from(b)));
        copied = span.end;
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A byte range of the text to mask.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    /// How many digits the range holds.
    digits: usize,
    /// The last four of them.
    last4: [u8; 4],
}

/// The text's bytes, decoded some number of times: each stands for a byte range of the
/// original text, which ends where the next one's starts.
trait Layer {
    /// How many bytes.
    fn len(&self) -> usize;
    /// Byte `i`.
    fn byte(&self, i: usize) -> u8;
    /// Where in the original text byte `i` starts (`len()`: the text's end).
    fn start(&self, i: usize) -> usize;
}

/// The original text.
impl Layer for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn byte(&self, i: usize) -> u8 {
        self[i]
    }
    fn start(&self, i: usize) -> usize {
        i
    }
}

/// A decoded byte and where in the original text it starts.
#[derive(Clone, Copy, Debug)]
struct Item {
    start: usize,
    byte: u8,
}

/// The text decoded once or more.
struct Decoded {
    /// The bytes, then an item that marks the text's end.
    items: Vec<Item>,
    /// How many of them are `%`.
    percents: usize,
}

impl Layer for Decoded {
    fn len(&self) -> usize {
        self.items.len() - 1
    }
    fn byte(&self, i: usize) -> u8 {
        self.items[i].byte
    }
    fn start(&self, i: usize) -> usize {
        self.items[i].start
    }
}

/// What the percent escape that `layer` has at `i` (`%` and two hex digits), if it has one,
/// decodes to.
fn escape_at<L: Layer + ?Sized>(layer: &L, i: usize) -> Option<u8> {
    if layer.byte(i) == b'%' && i + 2 < layer.len() {
        let hi = hex_value(layer.byte(i + 1))?;
        let lo = hex_value(layer.byte(i + 2))?;
        return Some((hi << 4) | lo);
    }
    None
}

/// `layer`, which has `percents` `%` signs, percent-decoded once (a `%` not followed by two
/// hex digits stays as it is), or `None` when it has no escape or fewer digits than a card
/// number once decoded.
fn decode<L: Layer + ?Sized>(layer: &L, percents: usize) -> Option<Decoded> {
    if percents == 0 {
        return None;
    }
    let len = layer.len();
    let mut decoded = Decoded {
        items: Vec::with_capacity(len + 1),
        percents: 0,
    };
    let mut escapes = 0;
    let mut digits = 0;
    let mut i = 0;
    while i < len {
        let start = layer.start(i);
        let mut byte = layer.byte(i);
        i += 1;
        if byte == b'%'
            && let Some(value) = escape_at(layer, i - 1)
        {
            byte = value;
            i += 2;
            escapes += 1;
        }
        digits += usize::from(byte.is_ascii_digit());
        decoded.percents += usize::from(byte == b'%');
        decoded.items.push(Item { start, byte });
    }
    if escapes == 0 || digits < MIN_DIGITS {
        return None;
    }
    decoded.items.push(Item {
        start: layer.start(len),
        byte: 0,
    });
    Some(decoded)
}

/// The value of a hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How many bytes the UTF-8 encoded Unicode space that `layer` has at `i` takes, if it has
/// one: U+00A0, U+2000 to U+200A, U+202F or U+3000.
fn unicode_space_at<L: Layer + ?Sized>(layer: &L, i: usize) -> Option<usize> {
    let at = |k: usize| (i + k < layer.len()).then(|| layer.byte(i + k));
    match (at(0)?, at(1)?) {
        (0xC2, 0xA0) => Some(2),
        (0xE2, 0x80) if matches!(at(2)?, 0x80..=0x8A | 0xAF) => Some(3),
        (0xE3, 0x80) if at(2)? == 0x80 => Some(3),
        _ => None,
    }
}

/// Reads `layer`, adding the card numbers found outside the ranges already `masked` to them
/// (keeping them in order).
fn scan<L: Layer + ?Sized>(layer: &L, masked: &mut Vec<Span>) {
    let mut found = Vec::new();
    let mut run = Run::default();
    // Whether the last unit was a digit, and how many separators follow the run's last digit.
    let mut in_group = false;
    let mut gap = 0;
    let mut next_masked = 0;
    let len = layer.len();
    let mut i = 0;
    while i < len {
        let byte = layer.byte(i);
        // Outside a run only a digit or an escape (whose hex digits must not start one)
        // matters.
        if !in_group && run.len == 0 && !byte.is_ascii_digit() && byte != b'%' {
            i += 1;
            continue;
        }
        // An escape left undecoded is one unit, neither a digit nor a separator: its hex
        // digits never start or join a run.
        let (digit, separator, units) = if escape_at(layer, i).is_some() {
            (false, false, 3)
        } else if byte.is_ascii_digit() {
            (true, false, 1)
        } else if matches!(byte, b' ' | b'\t' | b'-' | b'+' | b'.' | b'/' | b'_') {
            (false, true, 1)
        } else if byte >= 0x80
            && let Some(units) = unicode_space_at(layer, i)
        {
            (false, true, units)
        } else {
            (false, false, 1)
        };
        let start = layer.start(i);
        let end = layer.start(i + units);
        i += units;
        // What a deeper reading masked is neither a digit nor a separator.
        while next_masked < masked.len() && masked[next_masked].end <= start {
            next_masked += 1;
        }
        let free = next_masked == masked.len() || masked[next_masked].start >= end;
        if digit && free {
            if !in_group {
                run.start_group(start);
                in_group = true;
            }
            run.add_digit(byte, end);
            gap = 0;
        } else if separator && free {
            if in_group {
                run.end_group(&mut found);
                in_group = false;
            }
            gap += 1;
            if gap > MAX_GAP {
                run.finish(&mut found);
            }
        } else {
            if in_group {
                run.end_group(&mut found);
                in_group = false;
            }
            run.finish(&mut found);
        }
    }
    if in_group {
        run.end_group(&mut found);
    }
    run.finish(&mut found);
    if !found.is_empty() {
        masked.append(&mut found);
        masked.sort_unstable_by_key(|span| span.start);
    }
}

/// A sequence of digits without separators, part of a run.
#[derive(Clone, Copy, Debug, Default)]
struct Group {
    start: usize,
    end: usize,
    /// How many digits (`MAX_DIGITS + 1` for any more).
    len: usize,
}

/// The groups of the current run not yet judged, and the one being read: as few as let the
/// first be judged (each group has a digit, and the first is judged as soon as the groups
/// hold more than `MAX_DIGITS` digits).
struct Run {
    /// `groups[..len]`: the groups not yet judged; `groups[len]`: the one being read.
    groups: [Group; MAX_DIGITS + 1],
    len: usize,
    /// The digits of the groups not yet judged, then those of the one being read (of a group
    /// longer than a card number, the first `MAX_DIGITS + 1` only).
    digits: [u8; 2 * MAX_DIGITS + 2],
    /// How many digits the groups not yet judged have.
    pending_digits: usize,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            groups: [Group::default(); MAX_DIGITS + 1],
            len: 0,
            digits: [0; 2 * MAX_DIGITS + 2],
            pending_digits: 0,
        }
    }
}

impl Run {
    /// Starts reading a group at byte `start` of the text.
    fn start_group(&mut self, start: usize) {
        self.groups[self.len] = Group {
            start,
            end: start,
            len: 0,
        };
    }

    /// Adds a digit, ending at byte `end` of the text, to the group being read.
    fn add_digit(&mut self, digit: u8, end: usize) {
        let group = &mut self.groups[self.len];
        if group.len <= MAX_DIGITS {
            self.digits[self.pending_digits + group.len] = digit;
            group.len += 1;
        }
        group.end = end;
    }

    /// Ends the group being read, judging the groups that can be judged.
    fn end_group(&mut self, found: &mut Vec<Span>) {
        self.pending_digits += self.groups[self.len].len;
        self.len += 1;
        while self.pending_digits > MAX_DIGITS {
            self.judge_first(found);
        }
    }

    /// Judges every group left: the run has ended.
    fn finish(&mut self, found: &mut Vec<Span>) {
        // Fewer digits than a card number has: nothing to mask (the common case).
        while self.pending_digits >= MIN_DIGITS {
            self.judge_first(found);
        }
        self.len = 0;
        self.pending_digits = 0;
    }

    /// Masks the longest card-number-like stretch of whole groups from the first group on (the
    /// whole run when it qualifies, otherwise e.g. the card number in `4111111111111111 2024`),
    /// or leaves the first group alone when there is none; drops what was judged.
    fn judge_first(&mut self, found: &mut Vec<Span>) {
        let mut digits = 0;
        let mut longest = None;
        // The Luhn sums of the stretch's digits with those at even (`[0]`) or odd (`[1]`)
        // positions from the left doubled: which one applies depends on its length.
        let mut sums = [0u32; 2];
        for (h, group) in self.groups[..self.len].iter().enumerate() {
            if digits + group.len > MAX_DIGITS {
                break;
            }
            for (k, &d) in self.digits[..digits + group.len]
                .iter()
                .enumerate()
                .skip(digits)
            {
                let d = u32::from(d - b'0');
                sums[k % 2] += if d > 4 { 2 * d - 9 } else { 2 * d };
                sums[1 - k % 2] += d;
            }
            digits += group.len;
            // The last digit is not doubled, the one before it is, and so on.
            let valid = sums[digits % 2].is_multiple_of(10);
            debug_assert_eq!(valid, luhn_valid(self.digits[..digits].iter().copied()));
            if digits >= MIN_DIGITS && valid {
                longest = Some((h, digits));
            }
        }
        let (groups, digits) = match longest {
            Some((h, digits)) => {
                let mut last4 = [0u8; 4];
                last4.copy_from_slice(&self.digits[digits - 4..digits]);
                found.push(Span {
                    start: self.groups[0].start,
                    end: self.groups[h].end,
                    digits,
                    last4,
                });
                (h + 1, digits)
            }
            None => (1, self.groups[0].len),
        };
        self.groups.copy_within(groups..self.len, 0);
        self.len -= groups;
        self.digits.copy_within(digits..self.pending_digits, 0);
        self.pending_digits -= digits;
    }
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

    /// The Unicode spaces that separate digit groups.
    const UNICODE_SPACES: [char; 14] = [
        '\u{a0}', '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}',
        '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200a}', '\u{202f}', '\u{3000}',
    ];

    /// The ASCII separators.
    const ASCII_SEPARATORS: [u8; 7] = [b' ', b'\t', b'-', b'+', b'.', b'/', b'_'];

    /// Whether `c` is a separator.
    fn is_separator(c: char) -> bool {
        UNICODE_SPACES.contains(&c) || u8::try_from(c).is_ok_and(|b| ASCII_SEPARATORS.contains(&b))
    }

    /// `s` percent-encoded, every byte of it.
    fn encode(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    /// `s` percent-decoded once, as a lenient server does (a `%` without two hex digits
    /// after it is kept).
    fn percent_decode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%'
                && let (Some(hi), Some(lo)) = (
                    s.get(i + 1).and_then(|&b| hex_value(b)),
                    s.get(i + 2).and_then(|&b| hex_value(b)),
                )
            {
                out.push((hi << 4) | lo);
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }

    /// The digits of `s` decoded `levels` times, every separator stripped: maximal runs.
    fn stripped_digit_runs(s: &str, levels: usize) -> Vec<String> {
        let mut bytes = s.as_bytes().to_vec();
        for _ in 0..levels {
            bytes = percent_decode(&bytes);
        }
        let decoded = String::from_utf8_lossy(&bytes);
        let mut runs = vec![String::new()];
        for c in decoded.chars() {
            if c.is_ascii_digit() {
                runs.last_mut().unwrap().push(c);
            } else if !is_separator(c) && !runs.last().unwrap().is_empty() {
                runs.push(String::new());
            }
        }
        runs
    }

    /// Whether a Luhn-valid sequence of 13 to 19 digits can be read from `s` by decoding it
    /// (once, twice or three times) and stripping every separator.
    fn card_number_recoverable(s: &str) -> bool {
        (0..=MAX_DEPTH).any(|levels| {
            stripped_digit_runs(s, levels).iter().any(|run| {
                (MIN_DIGITS..=MAX_DIGITS.min(run.len())).any(|len| {
                    (0..=run.len() - len).any(|at| luhn_valid(run[at..at + len].bytes()))
                })
            })
        })
    }

    /// What a whole card number of `n` digits ending in `last4` is masked to.
    fn masked(n: usize, last4: &str) -> String {
        format!("{}{last4}", "*".repeat(n - 4))
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
        // An encoded digit right after the number: decoded once the run has 17 digits and
        // fails the Luhn check, but the number stands in the logged text as it is.
        assert_eq!(
            mask_pans("/p/4111111111111111%35"),
            "/p/************1111%35"
        );
    }

    /// Each form that used to be logged readable (found by probing), with what it is logged as.
    #[test]
    fn masks_each_recognised_form() {
        const FORMS: &[(&str, &str, &str)] = &[
            (
                "1. fully percent-encoded digits",
                "/pay/%34%31%31%31%31%31%31%31%31%31%31%31%31%31%31%31",
                "/pay/************1111",
            ),
            (
                "1. percent-encoded digits and separators",
                "/a/%35%35%30%30%2D%30%30%30%30-%30%30%30%30%20%30%30%30%34?x",
                "/a/************0004?x",
            ),
            (
                "2. dots",
                "/pay/4111.1111.1111.1111/x",
                "/pay/************1111/x",
            ),
            (
                "3. slashes",
                "/items/4111/1111/1111/1111",
                "/items/************1111",
            ),
            (
                "4. underscores",
                "?card=4111_1111_1111_1111&x=1",
                "?card=************1111&x=1",
            ),
            (
                "5. %09 (tab)",
                "q=4111%091111%091111%091111",
                "q=************1111",
            ),
            (
                "5. tab, raw",
                "note 4111\t1111\t1111\t1111.",
                "note ************1111.",
            ),
            (
                "6. %2F (slash)",
                "/a/4111%2F1111%2f1111%2F1111",
                "/a/************1111",
            ),
            (
                "7. %2E (dot)",
                "/a/5500%2E0000%2e0000%2E0004",
                "/a/************0004",
            ),
            (
                "8. %5F (underscore)",
                "/a/3782%5F822463%5f10005",
                "/a/***********0005",
            ),
            (
                "9. doubled dashes",
                "/a/4111--1111--1111--1111",
                "/a/************1111",
            ),
            (
                "9. doubled spaces",
                "card 4111  1111  1111  1111 ok",
                "card ************1111 ok",
            ),
            (
                "9. three separators, mixed",
                "4111 - 1111 - 1111%20-%201111",
                "************1111",
            ),
            (
                "10. %252D (double-encoded dash)",
                "/a/4111%252D1111%252D1111%252D1111",
                "/a/************1111",
            ),
            (
                "10. %2520 (double-encoded space)",
                "/a/4111%25201111%25201111%25201111/b",
                "/a/************1111/b",
            ),
            (
                "11. double-encoded digits",
                "/a/%2534%2531%2531%2531%2531%2531%2531%2531\
                 %2531%2531%2531%2531%2531%2531%2531%2531",
                "/a/************1111",
            ),
            (
                "11. triple-encoded digits",
                "/a/%252534%252531%252531%252531%252531%252531%252531%252531\
                 %252531%252531%252531%252531%252531%252531%252531%252531",
                "/a/************1111",
            ),
            (
                "12. %E2%80%80 (en quad)",
                "/a/4111%E2%80%801111%E2%80%801111%E2%80%801111",
                "/a/************1111",
            ),
            (
                "12. %e2%80%8a (hair space)",
                "/a/4111%e2%80%8a1111%e2%80%8a1111%e2%80%8a1111",
                "/a/************1111",
            ),
            (
                "12. %E2%80%AF (narrow no-break space)",
                "q=5500%E2%80%AF0000%E2%80%AF0000%E2%80%AF0004",
                "q=************0004",
            ),
            (
                "12. %C2%A0 (no-break space)",
                "q=4111%C2%A01111%C2%A01111%C2%A01111&x",
                "q=************1111&x",
            ),
            (
                "12. %E3%80%80 (ideographic space)",
                "q=4111%E3%80%801111%E3%80%801111%E3%80%801111",
                "q=************1111",
            ),
            (
                "12. no-break space, raw",
                "card 4111\u{a0}1111\u{a0}1111\u{a0}1111",
                "card ************1111",
            ),
            (
                "12. ideographic space, raw",
                "カード4111\u{3000}1111\u{3000}1111\u{3000}1111です",
                "カード************1111です",
            ),
        ];
        for &(form, text, expected) in FORMS {
            assert_eq!(mask_pans(text), expected, "{form}: {text}");
            assert!(!card_number_recoverable(expected), "{form}: {expected}");
        }
        // Every Unicode space, raw and percent-encoded in either case.
        for space in UNICODE_SPACES {
            let space = space.to_string();
            for separator in [space.clone(), encode(&space, true), encode(&space, false)] {
                let text = format!("/a/{}/b", ["4111", "1111", "1111", "1111"].join(&separator));
                assert_eq!(mask_pans(&text), "/a/************1111/b", "{text}");
            }
        }
    }

    #[test]
    fn leaves_invalid_and_out_of_range_runs() {
        for text in [
            "/pay/4111111111111112",                       // Luhn fails
            "/order/411111111111",                         // 12 digits
            "/order/41111111111111111113",                 // 20 digits, Luhn-valid or not
            "/a/4111----1111-1111-1111", // four separators end the run: 4 and 12 digits
            "/a/4111.1111.1111.1112",    // Luhn fails, whatever separates the groups
            "/a/%34%31%31%31%31%31%31%31%31%31%31%32", // 12 digits, encoded
            "/a/4111\u{200b}1111\u{200b}1111\u{200b}1111", // a zero-width space is no separator
            "/a/4111,1111,1111,1111",    // nor is a comma
            "/v1/orders/2024/11/30/1234", // 12 digits in all
            "/v1/orders/2024/11/30/1234?page=3&per_page=50",
            "/users/42?page=3",
            "",
            "no digits at all",
        ] {
            assert_eq!(mask_pans(text), text, "{text}");
            assert!(matches!(mask_pans(text), Cow::Borrowed(_)), "{text}");
        }
        // Luhn-valid runs of 12 and 20 digits are left alone too.
        for prefix in ["41111111111", "4111111111111111111"] {
            let valid = with_check_digit(prefix);
            assert!(luhn_valid(valid.bytes()));
            assert_eq!(mask_pans(&valid), valid);
            let path = format!("/order/{valid}?ref={valid}");
            assert_eq!(mask_pans(&path), path);
            let dotted = format!("/order/{}.{}", &valid[..6], &valid[6..]);
            assert_eq!(mask_pans(&dotted), dotted);
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
        // Numbers found at different depths.
        assert_eq!(
            mask_pans("/a/4111111111111111/%35%35%30%30%30%30%30%30%30%30%30%30%30%30%30%34"),
            "/a/************1111/************0004"
        );
    }

    #[test]
    fn a_shallower_depth_does_not_look_into_what_a_deeper_one_masked() {
        // Depth 1 masks 17 digits (`0` and 16 more); depth 0 would read the 16 after `%30`,
        // which pass the Luhn check too, over overlapping bytes.
        assert!(luhn_valid("04111111111111111".bytes()));
        assert_eq!(mask_pans("/a/%304111111111111111"), "/a/*************1111");
        // Found by the property test: the first 13 digits pass the Luhn check on their own,
        // and depth 0, for which `%C2%A0` ends the run, would mask them alone.
        assert!(luhn_valid("3884065174199".bytes()));
        assert_eq!(mask_pans("3884 0651 7419 9%C2%A000"), "***********9900");
        // Hex digits after a decoded `%25` are digits at depth 0: `34` and 15 more pass
        // the Luhn check there.
        let seventeen = with_check_digit(&format!("34{}", "1".repeat(14)));
        assert_eq!(
            mask_pans(&format!("/a/%25{seventeen}")),
            format!("/a/%25*************{}", &seventeen[13..])
        );
    }

    /// A card number written in one of the forms found readable by probing, choosing group
    /// sizes, separators and letter case from `dice`: 0 percent-encoded digits, 1 dots, 2
    /// slashes, 3 underscores, 4 `%09`, 5 `%2F`, 6 `%2E`, 7 `%5F`, 8 two or three separators,
    /// 9 double-encoded separators (`%252D`, `%2520`, ...), 10 double-encoded digits, 11
    /// Unicode spaces, raw or percent-encoded; 12 the forms masked before (none, a space, `-`
    /// or `+` between groups).
    fn render(form: usize, pan: &str, dice: &[u8]) -> String {
        let mut roll = {
            let mut i = 0;
            move |n: usize| {
                i += 1;
                usize::from(dice[i % dice.len()]) % n
            }
        };
        let mut groups = Vec::new();
        let mut rest = pan;
        while !rest.is_empty() {
            let size = [4, 4, 4, 1, 2, 3, 5, 6][roll(8)].min(rest.len());
            groups.push(&rest[..size]);
            rest = &rest[size..];
        }
        let upper = roll(2) == 0;
        let mut out = String::new();
        for (i, group) in groups.iter().enumerate() {
            if i > 0 {
                let plain = ["", " ", "-", "+"][roll(4)].to_owned();
                let ascii = char::from(ASCII_SEPARATORS[roll(7)]).to_string();
                let unicode = UNICODE_SPACES[roll(14)].to_string();
                out += &match form {
                    0 | 10 | 12 => plain,
                    1 => ".".into(),
                    2 => "/".into(),
                    3 => "_".into(),
                    4 => "%09".into(),
                    5 => encode("/", upper),
                    6 => encode(".", upper),
                    7 => encode("_", upper),
                    8 => (0..2 + roll(2)).map(|_| ascii.clone()).collect(),
                    9 => format!("%25{}", &encode(&ascii, upper)[1..]),
                    _ if roll(2) == 0 => unicode,
                    _ => encode(&unicode, upper),
                };
            }
            for digit in group.chars() {
                match form {
                    0 => out += &encode(&digit.to_string(), upper),
                    10 => out += &format!("%25{}", &encode(&digit.to_string(), upper)[1..]),
                    _ => out.push(digit),
                }
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// Any text (ASCII soup around card numbers, separators, escapes, multi-byte
        /// characters): no panic, and a Luhn-valid number of 13 to 19 digits, written in any
        /// recognised form between `=` and `&`, is masked to its last four digits (nothing
        /// else changes), after which no card number can be read from it by decoding and
        /// stripping separators.
        #[test]
        fn never_panics_and_hides_pans(
            before in "[0-9a-fA-F %+\\-/._\t=&é\u{a0}\u{2000}\u{3000}]{0,24}",
            after in "[0-9a-fA-F %+\\-/._\t=&é\u{a0}\u{2000}\u{3000}]{0,24}",
            body in "[0-9]{12,18}",
            form in 0usize..13,
            dice in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
        ) {
            let pan = with_check_digit(&body);
            let written = render(form, &pan, &dice);
            let text = format!("{before}={written}&{after}");
            let once = mask_pans(&text).into_owned();
            let alone = mask_pans(&written).into_owned();
            let last4 = &pan[pan.len() - 4..];
            proptest::prop_assert_eq!(&alone, &masked(pan.len(), last4), "{}", written);
            proptest::prop_assert!(!card_number_recoverable(&alone), "{} -> {}", written, alone);
            proptest::prop_assert!(once.contains(last4), "the last four stay: {}", once);
            proptest::prop_assert_eq!(
                &once,
                &format!("{}={alone}&{}", mask_pans(&before), mask_pans(&after)),
                "{}", text
            );
        }

        /// Digits written raw, encoded once or twice, and gaps of up to three separators of
        /// any kind, each raw, encoded once or twice, mixed at random: the number is masked
        /// whole, to its last four digits.
        #[test]
        fn mixed_encodings_never_reveal_the_number(
            body in "[0-9]{12,18}",
            dice in proptest::collection::vec(proptest::num::u8::ANY, 1..128),
        ) {
            let pan = with_check_digit(&body);
            let mut roll = {
                let mut i = 0;
                move |n: usize| {
                    i += 1;
                    usize::from(dice[i % dice.len()]) % n
                }
            };
            let encode_at = |s: &str, level: usize, upper: bool| match level {
                0 => s.to_owned(),
                1 => encode(s, upper),
                _ => encode(s, upper).replace('%', "%25"),
            };
            let mut written = String::new();
            for (i, digit) in pan.chars().enumerate() {
                if i > 0 {
                    for _ in 0..[0, 0, 1, 2, 3][roll(5)] {
                        let sep = if roll(3) == 0 {
                            UNICODE_SPACES[roll(14)].to_string()
                        } else {
                            char::from(ASCII_SEPARATORS[roll(7)]).to_string()
                        };
                        written += &encode_at(&sep, roll(3), roll(2) == 0);
                    }
                }
                written += &encode_at(&digit.to_string(), roll(3), roll(2) == 0);
            }
            let out = mask_pans(&written).into_owned();
            // The deepest reading decodes every digit and separator: the number is whole.
            let last4 = &pan[pan.len() - 4..];
            proptest::prop_assert_eq!(&out, &masked(pan.len(), last4), "{}", written);
            proptest::prop_assert!(!card_number_recoverable(&out), "{} -> {}", written, out);
        }

        /// Arbitrary text: no panic, never longer, and borrowed exactly when unchanged.
        #[test]
        fn arbitrary_text(
            text in proptest::prop_oneof![
                "[0-9%a-fA-F .\\-_/+\t\u{a0}\u{2000}\u{3000}é€]{0,200}",
                "\\PC{0,200}",
                proptest::arbitrary::any::<String>(),
                "(%25|%2[05DdEeF]|%3[0-9]|%E2%80%8[0-9A]|[0-9]){0,60}",
            ],
        ) {
            let out = mask_pans(&text);
            proptest::prop_assert!(out.len() <= text.len());
            proptest::prop_assert_eq!(matches!(out, Cow::Borrowed(_)), out == text.as_str());
        }
    }
}
