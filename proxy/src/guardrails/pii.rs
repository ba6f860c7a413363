//! PII detectors: email, phone, payment card, IBAN, US SSN, IP addresses.
//!
//! Numbers are the hard part: prompts are full of digits (timestamps, versions, order
//! ids, prices), so every numeric detector demands *structure* or a *checksum*:
//! cards need a known IIN, a plausible length and Luhn; IBANs need the country's exact
//! length and mod-97; SSNs need the dashed `3-2-4` shape in issued ranges; phones need a
//! leading `+` or a national grouping with separators; IPv4 needs exactly four octets.
//!
//! All numeric detectors share one pass that cuts the text into *digit clusters* (digits
//! joined by at most three separator bytes from ` -.()/`), so prose without digits costs a
//! byte loop and the per-detector work only runs on the few clusters long enough to
//! matter.

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

use super::{is_word, Category, Finding};

/// Trigger class per byte: `b'0'` for digits, `+`/`(` (a phone may start there), `@`
/// (email), `:` (IPv6); zero for everything else.
static TRIGGER: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = b'0';
        c += 1;
    }
    t[b'+' as usize] = b'+';
    t[b'(' as usize] = b'(';
    t[b'@' as usize] = b'@';
    t[b':' as usize] = b':';
    t
};

#[derive(Debug)]
pub(super) struct Detector {
    phone: Regex,
}

impl Detector {
    pub(super) fn new() -> Self {
        // Applied to one digit cluster at a time, never to whole texts.
        let phone = Regex::new(
            r"(?x)
            # International: + country code, then groups; digit count checked after.
            \+[1-9]\d{0,3}(?:[\ .-]?\(?\d{1,5}\)?){1,6}
            # NANP with area code in parentheses: (555) 123-4567
            | \(\d{3}\)\ ?\d{3}[\ .-]\d{4}\b
            # NANP 555-123-4567 / 555.123.4567 / 555 123 4567. Dates are 4-2-2 and never
            # match this 3-3-4 shape.
            | \b\d{3}([.\ -])\d{3}[.\ -]\d{4}\b
            # Trunk-prefix national formats: 020 7946 0958, 06 12 34 56 78, 030-1234-5678.
            | \b0\d{1,4}(?:[\ .-]\d{2,4}){2,4}\b
            ",
        )
        .expect("phone pattern compiles");
        Detector { phone }
    }

    pub(super) fn scan(&self, text: &str, on: &dyn Fn(Category) -> bool, out: &mut Vec<Finding>) {
        let email = on(Category::Email);
        let ip = on(Category::IpAddress);
        let numeric = ip
            || [
                Category::Phone,
                Category::PaymentCard,
                Category::Iban,
                Category::Ssn,
            ]
            .iter()
            .any(|c| on(*c));
        if !(email || numeric) {
            return;
        }
        let b = text.as_bytes();
        // One pass over the text: every PII detector starts at a trigger byte, and most
        // bytes of a prompt are not one. `ipv6_end`/`email_end` keep a run of `:` or `@`
        // from being expanded once per byte.
        let (mut ipv6_end, mut email_end) = (0, 0);
        let mut i = 0;
        while i < b.len() {
            let trigger = TRIGGER[usize::from(b[i])];
            if trigger == 0 {
                i += 1;
                continue;
            }
            match trigger {
                b'@' if email && i >= email_end => email_end = email_at(text, i, out),
                b':' if ip && i >= ipv6_end => ipv6_end = ipv6_at(text, i, out),
                b'0' | b'+' | b'(' if numeric => {
                    let starts = trigger == b'0' || b.get(i + 1).is_some_and(u8::is_ascii_digit);
                    if starts {
                        // IBAN: two letters glued to the first digits, as a word of its own.
                        if trigger == b'0'
                            && on(Category::Iban)
                            && i >= 2
                            && b[i - 2].is_ascii_alphabetic()
                            && b[i - 1].is_ascii_alphabetic()
                            && (i == 2 || !is_word(b[i - 3]))
                        {
                            if let Some(end) = iban_at(b, i - 2) {
                                out.push(Finding {
                                    category: Category::Iban,
                                    start: i - 2,
                                    end,
                                });
                            }
                        }
                        let end = cluster_end(b, i);
                        self.cluster(text, i, end, on, out);
                        // A cluster holds no `@` or `:`, so nothing is skipped.
                        i = end.max(i + 1);
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    /// Runs the numeric detectors over `text[start..end]`, one digit cluster.
    fn cluster(
        &self,
        text: &str,
        start: usize,
        end: usize,
        on: &dyn Fn(Category) -> bool,
        out: &mut Vec<Finding>,
    ) {
        let b = text.as_bytes();
        let c = &text[start..end];
        let digits = c.bytes().filter(u8::is_ascii_digit).count();
        if digits < 4 {
            return; // Shortest thing we detect is an IPv4 like 1.2.3.4.
        }
        // A cluster glued to a word (`v1.2.3.4`, `abc123-45-6789`, `4111…1111th`) is part
        // of an identifier; matches touching that edge are rejected.
        let glued_left = start > 0 && is_word(b[start - 1]);
        let glued_right = end < b.len() && is_word(b[end]);
        let mut push = |category, s: usize, e: usize| {
            if (s == 0 && glued_left) || (e == c.len() && glued_right) {
                return;
            }
            out.push(Finding {
                category,
                start: start + s,
                end: start + e,
            });
        };
        if on(Category::IpAddress) && c.contains('.') {
            for (s, e) in dotted_quads(c) {
                let preceded_by_version = text[..start + s]
                    .trim_end()
                    .rsplit(|ch: char| !ch.is_ascii_alphabetic())
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("version"));
                if !preceded_by_version {
                    push(Category::IpAddress, s, e);
                }
            }
        }
        if digits < 9 {
            return;
        }
        if on(Category::Ssn) && c.contains('-') {
            for (s, e) in ssns(c) {
                push(Category::Ssn, s, e);
            }
        }
        if on(Category::PaymentCard) && digits >= 13 {
            for (s, e) in cards(c) {
                push(Category::PaymentCard, s, e);
            }
        }
        if on(Category::Phone) {
            // `#123-456-7890` and `ORD-555-123-4567` are ids, not phones.
            let id_prefix = start > 0
                && (b[start - 1] == b'#'
                    || (b[start - 1] == b'-' && start > 1 && b[start - 2].is_ascii_alphanumeric()));
            for m in self.phone.find_iter(c) {
                let n = m.as_str().bytes().filter(u8::is_ascii_digit).count();
                let ok = if m.as_str().starts_with('+') {
                    (8..=15).contains(&n)
                } else {
                    (9..=12).contains(&n)
                };
                // The SSN shape 3-2-4 belongs to the SSN detector, which knows the valid
                // ranges; an invalid SSN must not come back as a phone.
                let ssn_shaped = m.len() == 11
                    && m.as_str().as_bytes()[3] == b'-'
                    && m.as_str().as_bytes()[6] == b'-';
                if ok && !ssn_shaped && !(m.start() == 0 && id_prefix) {
                    push(Category::Phone, m.start(), m.end());
                }
            }
        }
    }
}

/// End of the digit cluster starting at `i`: digits joined by up to three separators,
/// ending on a digit (or `)` closing an area code).
fn cluster_end(b: &[u8], i: usize) -> usize {
    let mut j = i;
    let mut end = i;
    let mut seps = 0;
    while j < b.len() {
        let c = b[j];
        if c.is_ascii_digit() {
            seps = 0;
            j += 1;
            end = j;
        } else if matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'/' | b'+') && seps < 3 {
            seps += 1;
            j += 1;
        } else {
            break;
        }
    }
    end
}

// === IPv4 ===

/// Dotted quads inside a cluster: runs of `[0-9.]` with exactly four parts that parse
/// (std rejects octets > 255 and leading zeros). `1.2.3` and `1.2.3.4.5` are versions.
fn dotted_quads(c: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    runs(c, |b| b.is_ascii_digit() || b == b'.').filter_map(move |(s, e)| {
        let run = &c[s..e];
        let lead = run.len() - run.trim_start_matches('.').len();
        let t = run.trim_matches('.');
        (t.split('.').count() == 4 && t.parse::<Ipv4Addr>().is_ok())
            .then_some((s + lead, s + lead + t.len()))
    })
}

/// Maximal runs of bytes satisfying `keep`.
fn runs<F: Fn(u8) -> bool>(c: &str, keep: F) -> impl Iterator<Item = (usize, usize)> + use<'_, F> {
    let b = c.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && !keep(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        let s = i;
        while i < b.len() && keep(b[i]) {
            i += 1;
        }
        Some((s, i))
    })
}

// === IPv6 ===

/// An IPv6 candidate grows from the `:` at `colon` (returning where to resume) over `[0-9A-Fa-f:.]`. To keep `std::io`, `a::b`,
/// `12:30:45` and MAC addresses out, a candidate must stand alone (no word byte either
/// side), hold at least two colons, a decimal digit and five hex digits, and parse.
/// Loopback `::1` is therefore not reported (it identifies no one).
fn ipv6_at(text: &str, colon: usize, out: &mut Vec<Finding>) -> usize {
    let b = text.as_bytes();
    let hexish = |c: u8| c.is_ascii_hexdigit() || c == b':' || c == b'.';
    let mut s = colon;
    while s > 0 && hexish(b[s - 1]) && colon - s < 64 {
        s -= 1;
    }
    let mut e = colon + 1;
    while e < b.len() && hexish(b[e]) {
        e += 1;
    }
    let resume = e;
    while e > s && b[e - 1] == b'.' {
        e -= 1; // sentence full stop
    }
    if (s > 0 && is_word(b[s - 1])) || (e < b.len() && is_word(b[e])) {
        return resume;
    }
    let cand = &text[s..e];
    let colons = cand.bytes().filter(|&c| c == b':').count();
    let hex = cand.bytes().filter(u8::is_ascii_hexdigit).count();
    if colons >= 2
        && hex >= 5
        && cand.bytes().any(|c| c.is_ascii_digit())
        && cand.parse::<Ipv6Addr>().is_ok()
    {
        out.push(Finding {
            category: Category::IpAddress,
            start: s,
            end: e,
        });
    }
    resume
}

// === SSN ===

/// Dashed `AAA-GG-SSSS` in a cluster, not part of a longer dashed number, outside the
/// ranges the SSA never issues.
fn ssns(c: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let b = c.as_bytes();
    runs(c, |x| x.is_ascii_digit() || x == b'-').filter_map(move |(s, e)| {
        let t = &b[s..e];
        let shape = t.len() == 11
            && t[3] == b'-'
            && t[6] == b'-'
            && t.iter()
                .enumerate()
                .all(|(k, x)| k == 3 || k == 6 || x.is_ascii_digit());
        (shape && ssn_valid(&c[s..e])).then_some((s, e))
    })
}

/// SSA rules: area not 000, 666 or 900–999; group not 00; serial not 0000. The
/// Woolworth wallet number 078-05-1120 was voided after thousands misused it.
pub(super) fn ssn_valid(s: &str) -> bool {
    let mut parts = s.split('-');
    let (Some(a), Some(g), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(area), Ok(group), Ok(serial)) = (a.parse::<u16>(), g.parse::<u8>(), n.parse::<u16>())
    else {
        return false;
    };
    a.len() == 3
        && g.len() == 2
        && n.len() == 4
        && area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && s != "078-05-1120"
}

// === payment cards ===

/// Card numbers in a cluster: consecutive digit groups joined by one uniform separator
/// (space or dash) or one unbroken run, 13–19 digits, known IIN, Luhn. From each group
/// the longest valid window wins.
fn cards(c: &str) -> Vec<(usize, usize)> {
    let groups: Vec<(usize, usize)> = runs(c, |x| x.is_ascii_digit()).collect();
    let mut found = Vec::new();
    let mut g = 0;
    while g < groups.len() {
        let mut digits = [0u8; 19];
        let mut n = 0;
        let mut sep: Option<&str> = None;
        let mut best = None;
        for e in g..groups.len() {
            if e > g {
                let between = &c[groups[e - 1].1..groups[e].0];
                if !(between == " " || between == "-") || sep.is_some_and(|s| s != between) {
                    break;
                }
                sep = Some(between);
            }
            let run = &c.as_bytes()[groups[e].0..groups[e].1];
            if n + run.len() > 19 {
                break;
            }
            digits[n..n + run.len()].copy_from_slice(run);
            n += run.len();
            if n >= 13 && card_valid(&digits[..n]) {
                best = Some(e);
            }
        }
        match best {
            Some(e) => {
                found.push((groups[g].0, groups[e].1));
                g = e + 1;
            }
            None => g += 1,
        }
    }
    found
}

/// IIN ranges (first digits) and the lengths each network issues, then Luhn.
pub(super) fn card_valid(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| -> u32 {
        digits[..k.min(n)]
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (p1, p2, p3, p4, p6) = (prefix(1), prefix(2), prefix(3), prefix(4), prefix(6));
    let network_ok = match p1 {
        4 => matches!(n, 13 | 16 | 19),              // Visa
        2 => (2221..=2720).contains(&p4) && n == 16, // Mastercard 2-series
        5 => ((51..=55).contains(&p2) && n == 16) || ([50, 56, 57, 58].contains(&p2) && n >= 13), // MC, Maestro
        3 => {
            ([34, 37].contains(&p2) && n == 15)                               // Amex
                || (((300..=305).contains(&p3) || [36, 38, 39].contains(&p2)) && (14..=19).contains(&n)) // Diners
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&n)) // JCB
        }
        6 => {
            (p4 == 6011
                || p2 == 65
                || (644..=649).contains(&p3)
                || (622126..=622925).contains(&p6)
                || p2 == 62
                || p2 == 67
                || p2 == 63)
                && (16..=19).contains(&n) // Discover, UnionPay, Maestro
        }
        _ => false,
    };
    network_ok && luhn(digits)
}

/// Luhn mod-10 over ASCII digits.
pub(super) fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, d) in digits.iter().rev().enumerate() {
        if !d.is_ascii_digit() {
            return false;
        }
        let mut v = u32::from(d - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum % 10 == 0
}

// === IBAN ===

/// IBAN length per ISO 3166 country (SWIFT IBAN registry).
const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AL", 28),
    (b"AT", 20),
    (b"AZ", 28),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"BY", 28),
    (b"CH", 21),
    (b"CR", 22),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"DO", 28),
    (b"EE", 20),
    (b"EG", 29),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GE", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"GT", 28),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IQ", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"JO", 30),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LC", 32),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"MD", 24),
    (b"ME", 22),
    (b"MK", 19),
    (b"MR", 27),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PS", 29),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SC", 31),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
];

/// An IBAN starting at `s` (compact or in space-separated groups), returning its end.
/// Exactly the country's length must be collected, ending at a word edge, and mod-97
/// must hold, so `DE12 …` with a wrong check or a wrong length is not reported.
fn iban_at(b: &[u8], s: usize) -> Option<usize> {
    let country = [b[s].to_ascii_uppercase(), b[s + 1].to_ascii_uppercase()];
    let len = IBAN_LENGTHS.iter().find(|(c, _)| **c == country)?.1;
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut i = s;
    while n < len && i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() {
            // Written lower-case now and then; the checksum is over upper case.
            chars[n] = c.to_ascii_uppercase();
            n += 1;
            i += 1;
        } else if c == b' ' && n >= 4 && i + 1 < b.len() && b[i + 1].is_ascii_alphanumeric() {
            i += 1; // single space between groups
        } else {
            break;
        }
    }
    let ends_at_edge = i >= b.len() || !is_word(b[i]);
    (n == len && ends_at_edge && iban_valid(&chars[..n])).then_some(i)
}

/// ISO 13616 / ISO 7064 mod-97-10: move the first four characters to the end, read
/// letters as 10..35, the number mod 97 must be 1.
pub(super) fn iban_valid(iban: &[u8]) -> bool {
    if iban.len() < 15 || !iban[2].is_ascii_digit() || !iban[3].is_ascii_digit() {
        return false;
    }
    let mut rem = 0u32;
    for &c in iban[4..].iter().chain(&iban[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

// === email ===

/// File extensions that look like TLDs after `@` in asset names (`icon@2x.png`).
const NOT_TLDS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "pdf", "js", "ts", "css", "json", "yaml",
    "yml", "txt", "md", "html", "lock", "tsx", "jsx", "mjs", "rs", "py", "go",
];

/// Grows from the `@` at `at`, returning where to resume: local part `[A-Za-z0-9._%+-]`, domain of dot-separated labels with
/// an alphabetic TLD. Rejected: `@decorator`/`@scope/pkg` (no local part), `pkg@1.2.3`
/// (numeric TLD), `icon@2x.png` (file extension), `git@host:org/repo` (scp-style SSH
/// remote, not a mailbox). `example.com` addresses are still addresses.
fn email_at(text: &str, at: usize, out: &mut Vec<Finding>) -> usize {
    let b = text.as_bytes();
    let local = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-');
    let domain = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-');
    let mut s = at;
    while s > 0 && local(b[s - 1]) && at - s < 64 {
        s -= 1;
    }
    while s < at && matches!(b[s], b'.' | b'-' | b'+') {
        s += 1;
    }
    let mut e = at + 1;
    while e < b.len() && domain(b[e]) && e - at < 255 {
        e += 1;
    }
    while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    if s == at || e == at + 1 {
        return at + 1;
    }
    let (loc, dom) = (&text[s..at], &text[at + 1..e]);
    let Some((_, tld)) = dom.rsplit_once('.') else {
        return at + 1;
    };
    let labels_ok = dom
        .split('.')
        .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
    let tld_ok = (2..=24).contains(&tld.len())
        && tld.bytes().all(|c| c.is_ascii_alphabetic())
        && !NOT_TLDS.iter().any(|x| tld.eq_ignore_ascii_case(x));
    let scp_remote = b.get(e) == Some(&b':')
        && b.get(e + 1)
            .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, b'/' | b'~'));
    if labels_ok && tld_ok && !loc.ends_with('.') && !loc.contains("..") && !scp_remote {
        out.push(Finding {
            category: Category::Email,
            start: s,
            end: e,
        });
        return e;
    }
    at + 1
}
