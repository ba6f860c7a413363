//! Guardrail detectors: find sensitive spans in prompt and response text.
//!
//! A [`Scanner`] is built once from the enabled [`Category`]s and shared (it is `Send +
//! Sync`); [`Scanner::scan`] returns non-overlapping, sorted [`Finding`]s as byte ranges,
//! [`redact`] replaces them with `[REDACTED:…]` markers, and [`StreamRedactor`] does the
//! same for a streamed response arriving in arbitrary pieces. [`Scanner::injection_score`]
//! scores prompt-injection heuristics in `[0, 1]`.
//!
//! # What is detected
//!
//! | group | category | how |
//! |---|---|---|
//! | PII | [`Category::Email`] | `local@domain.tld`, RFC-ish charset, TLD is letters and not a file extension |
//! | PII | [`Category::Phone`] | `+` international (8–15 digits) or national formats **with separators** |
//! | PII | [`Category::PaymentCard`] | 13–19 digits, uniform space/dash grouping, known IIN range, Luhn |
//! | PII | [`Category::Iban`] | per-country length table, ISO 7064 mod-97 |
//! | PII | [`Category::Ssn`] | `AAA-GG-SSSS`, SSA-invalid ranges excluded |
//! | PII | [`Category::IpAddress`] | dotted-quad IPv4 and IPv6 (std parsers) |
//! | Secret | AWS, GitHub, GitLab, OpenAI/Anthropic, Google, Slack, Stripe | literal prefix + shape + randomness check |
//! | Secret | [`Category::AwsKey`] (secret key) | 40 chars of base64 within 96 bytes after an AWS secret keyword |
//! | Secret | [`Category::PrivateKey`] | `-----BEGIN … PRIVATE KEY-----` through the END line |
//! | Secret | [`Category::Jwt`] | three base64url segments whose header is JSON with `"alg"` |
//! | Secret | [`Category::ConnectionString`] | `scheme://user:password@host` for SQL, Mongo, Redis, AMQP |
//! | Injection | [`Category::PromptInjection`] | weighted phrase families scored in `[0, 1]`, see [`Scanner::injection_score`] |
//!
//! # What is not detected
//!
//! Names, postal addresses, dates of birth and other free-text PII (those need NER, not
//! patterns); phone numbers written as bare digit runs without `+` (indistinguishable from
//! order ids and timestamps); SSNs without dashes; cards with mixed or unusual
//! separators; IPv6 loopback `::1` and other addresses with fewer than five hex digits;
//! generic high-entropy strings with no known prefix (the source of most false positives
//! in secret scanners: UUIDs, git SHAs, hashes); secrets split by escaping or encoding;
//! injection phrased in other languages or paraphrased away from the phrase families.
//! The injection score is a heuristic tripwire, not a classifier.
//!
//! # Cost
//!
//! Three passes over the text, each gated by cheap triggers: one Aho-Corasick (SIMD)
//! search for every secret prefix; one byte loop for PII that acts only at digits, `@`,
//! `:`, `+` and `(`; and for injection a lower-casing copy searched by one regex per
//! phrase family, each with a literal prefilter.

mod injection;
mod pii;
mod secrets;
mod stream;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use injection::InjectionVerdict;
pub use stream::{StreamRedactor, DEFAULT_WINDOW};

/// The kind of a sensitive span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Email,
    Phone,
    PaymentCard,
    Iban,
    Ssn,
    IpAddress,
    AwsKey,
    GithubToken,
    GitlabToken,
    ProviderApiKey,
    GoogleApiKey,
    SlackToken,
    StripeKey,
    PrivateKey,
    Jwt,
    ConnectionString,
    PromptInjection,
}

/// The policy group a [`Category`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Pii,
    Secret,
    Injection,
}

// === impl Category ===

impl Category {
    /// Every category, in declaration order.
    pub const ALL: [Category; 17] = [
        Category::Email,
        Category::Phone,
        Category::PaymentCard,
        Category::Iban,
        Category::Ssn,
        Category::IpAddress,
        Category::AwsKey,
        Category::GithubToken,
        Category::GitlabToken,
        Category::ProviderApiKey,
        Category::GoogleApiKey,
        Category::SlackToken,
        Category::StripeKey,
        Category::PrivateKey,
        Category::Jwt,
        Category::ConnectionString,
        Category::PromptInjection,
    ];

    /// The policy group this category belongs to.
    pub fn group(self) -> Group {
        use Category::*;
        match self {
            Email | Phone | PaymentCard | Iban | Ssn | IpAddress => Group::Pii,
            AwsKey | GithubToken | GitlabToken | ProviderApiKey | GoogleApiKey | SlackToken
            | StripeKey | PrivateKey | Jwt | ConnectionString => Group::Secret,
            PromptInjection => Group::Injection,
        }
    }

    /// The text that replaces a redacted span, e.g. `[REDACTED:EMAIL]`.
    pub fn marker(self) -> &'static str {
        use Category::*;
        match self {
            Email => "[REDACTED:EMAIL]",
            Phone => "[REDACTED:PHONE]",
            PaymentCard => "[REDACTED:PAYMENT_CARD]",
            Iban => "[REDACTED:IBAN]",
            Ssn => "[REDACTED:SSN]",
            IpAddress => "[REDACTED:IP_ADDRESS]",
            AwsKey => "[REDACTED:AWS_KEY]",
            GithubToken => "[REDACTED:GITHUB_TOKEN]",
            GitlabToken => "[REDACTED:GITLAB_TOKEN]",
            ProviderApiKey => "[REDACTED:PROVIDER_API_KEY]",
            GoogleApiKey => "[REDACTED:GOOGLE_API_KEY]",
            SlackToken => "[REDACTED:SLACK_TOKEN]",
            StripeKey => "[REDACTED:STRIPE_KEY]",
            PrivateKey => "[REDACTED:PRIVATE_KEY]",
            Jwt => "[REDACTED:JWT]",
            ConnectionString => "[REDACTED:CONNECTION_STRING]",
            PromptInjection => "[REDACTED:PROMPT_INJECTION]",
        }
    }

    /// The snake_case name used in config, records and metrics labels.
    pub fn as_str(self) -> &'static str {
        use Category::*;
        match self {
            Email => "email",
            Phone => "phone",
            PaymentCard => "payment_card",
            Iban => "iban",
            Ssn => "ssn",
            IpAddress => "ip_address",
            AwsKey => "aws_key",
            GithubToken => "github_token",
            GitlabToken => "gitlab_token",
            ProviderApiKey => "provider_api_key",
            GoogleApiKey => "google_api_key",
            SlackToken => "slack_token",
            StripeKey => "stripe_key",
            PrivateKey => "private_key",
            Jwt => "jwt",
            ConnectionString => "connection_string",
            PromptInjection => "prompt_injection",
        }
    }

    /// Tie-break when two findings of the same length overlap: higher wins. A structured
    /// secret (which embeds hosts, emails, digits) beats the PII that looks like a part of
    /// it; validated numbers (card, IBAN, SSN) beat the looser phone pattern.
    fn specificity(self) -> u8 {
        use Category::*;
        match self {
            PrivateKey => 20,
            ConnectionString => 19,
            Jwt => 18,
            AwsKey | GithubToken | GitlabToken | ProviderApiKey | GoogleApiKey | SlackToken
            | StripeKey => 17,
            PaymentCard => 10,
            Iban => 9,
            Ssn => 8,
            Email => 7,
            IpAddress => 6,
            Phone => 5,
            PromptInjection => 0,
        }
    }
}

impl Group {
    /// The snake_case name used in config and thresholds.
    pub fn as_str(self) -> &'static str {
        match self {
            Group::Pii => "pii",
            Group::Secret => "secret",
            Group::Injection => "injection",
        }
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sensitive span: `text[start..end]`, byte offsets on char boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Finding {
    pub category: Category,
    pub start: usize,
    pub end: usize,
}

impl Finding {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Guardrail settings as they appear under `guardrails:` in the node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailConfig {
    /// Categories to detect; default: all of them.
    pub categories: Vec<Category>,
    /// Injection score in `[0, 1]` at or above which a text counts as an injection
    /// attempt and its matched phrases become findings. Default 0.5: any one strong
    /// family (e.g. "ignore previous instructions") alone, or two weak ones together.
    pub injection_threshold: f32,
    /// Bytes a [`StreamRedactor`] may hold back; default 256. Secrets up to this length
    /// are caught however the stream is split.
    pub stream_window: usize,
}

impl Default for GuardrailConfig {
    fn default() -> Self {
        GuardrailConfig {
            categories: Category::ALL.to_vec(),
            injection_threshold: injection::DEFAULT_THRESHOLD,
            stream_window: stream::DEFAULT_WINDOW,
        }
    }
}

/// A guardrail setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GuardrailError {
    #[error("guardrails.injection_threshold = {0}: must be within 0.0..=1.0 (0.5 flags one strong phrase family)")]
    Threshold(f32),
    #[error("guardrails.stream_window = {0}: must be at least {min} bytes, the longest token promised across a stream boundary", min = stream::MIN_WINDOW)]
    Window(usize),
}

impl GuardrailConfig {
    /// Checks the values serde cannot.
    ///
    /// # Errors
    /// A threshold outside `[0, 1]` or a window too small to hold the longest token.
    pub fn validate(&self) -> Result<(), GuardrailError> {
        if !(0.0..=1.0).contains(&self.injection_threshold) {
            return Err(GuardrailError::Threshold(self.injection_threshold));
        }
        if self.stream_window < stream::MIN_WINDOW {
            return Err(GuardrailError::Window(self.stream_window));
        }
        Ok(())
    }
}

// === impl Scanner ===

/// The compiled detectors. Build once (compiling the patterns costs milliseconds), share
/// behind an `Arc`.
#[derive(Debug)]
pub struct Scanner {
    enabled: [bool; Category::ALL.len()],
    pii: pii::Detector,
    secrets: secrets::Detector,
    injection: injection::Detector,
    injection_threshold: f32,
}

impl Scanner {
    /// A scanner for the given categories with the default injection threshold.
    pub fn new(categories: &[Category]) -> Scanner {
        let mut enabled = [false; Category::ALL.len()];
        for c in categories {
            enabled[*c as usize] = true;
        }
        Scanner {
            enabled,
            pii: pii::Detector::new(),
            secrets: secrets::Detector::new(),
            injection: injection::Detector::new(),
            injection_threshold: injection::DEFAULT_THRESHOLD,
        }
    }

    /// A scanner for every category.
    pub fn all() -> Scanner {
        Scanner::new(&Category::ALL)
    }

    /// A scanner for a validated [`GuardrailConfig`].
    ///
    /// # Errors
    /// See [`GuardrailConfig::validate`].
    pub fn from_config(config: &GuardrailConfig) -> Result<Scanner, GuardrailError> {
        config.validate()?;
        Ok(Scanner::new(&config.categories).with_injection_threshold(config.injection_threshold))
    }

    /// Sets the score at or above which injection phrases become findings.
    pub fn with_injection_threshold(mut self, threshold: f32) -> Scanner {
        self.injection_threshold = threshold.clamp(0.0, 1.0);
        self
    }

    fn enabled(&self, c: Category) -> bool {
        self.enabled[c as usize]
    }

    /// All sensitive spans in `text`: sorted by start, non-overlapping. Where detectors
    /// overlap, secrets beat PII and PII beats injection phrases; within a group the
    /// longer span wins, then the more specific category (a card beats a phone).
    pub fn scan(&self, text: &str) -> Vec<Finding> {
        let mut found = Vec::new();
        let on = |c: Category| self.enabled(c);
        self.secrets.scan(text, &on, &mut found);
        self.pii.scan(text, &on, &mut found);
        if self.enabled(Category::PromptInjection) {
            let (verdict, spans) = self.injection.evaluate(text);
            if verdict.score >= self.injection_threshold && verdict.score > 0.0 {
                found.extend(spans.into_iter().map(|(start, end)| Finding {
                    category: Category::PromptInjection,
                    start,
                    end,
                }));
            }
        }
        found.retain(|f| self.enabled(f.category));
        resolve_overlaps(found)
    }

    /// The prompt-injection score of `text` and the phrase families that matched. Runs
    /// whether or not [`Category::PromptInjection`] is enabled.
    pub fn injection_score(&self, text: &str) -> InjectionVerdict {
        self.injection.evaluate(text).0
    }

    /// The configured injection threshold.
    pub fn injection_threshold(&self) -> f32 {
        self.injection_threshold
    }
}

/// Keeps a maximal set of non-overlapping findings, preferring (in order) secrets, then
/// PII, then injection phrases; longer spans; more specific categories; earlier starts.
fn resolve_overlaps(mut found: Vec<Finding>) -> Vec<Finding> {
    if found.len() <= 1 {
        return found;
    }
    // Secrets first: a token inside something email-shaped (`https://x:ghs_…@github.com`)
    // is the more specific reading. Injection phrases last: they are context, not data.
    let rank = |f: &Finding| match f.category.group() {
        Group::Secret => 0,
        Group::Pii => 1,
        Group::Injection => 2,
    };
    found.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(b.len().cmp(&a.len()))
            .then(b.category.specificity().cmp(&a.category.specificity()))
            .then(a.start.cmp(&b.start))
    });
    // `kept` stays sorted by start; overlap test against the neighbours only.
    let mut kept: Vec<Finding> = Vec::with_capacity(found.len());
    for f in found {
        let i = kept.partition_point(|k| k.start < f.start);
        let clash_prev = i > 0 && kept[i - 1].end > f.start;
        let clash_next = i < kept.len() && kept[i].start < f.end;
        if !clash_prev && !clash_next && f.start < f.end {
            kept.insert(i, f);
        }
    }
    kept
}

/// `text` with every finding replaced by its [`Category::marker`]. `findings` must be
/// sorted and non-overlapping (as [`Scanner::scan`] returns them); any that are not are
/// skipped rather than panicking.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for f in findings {
        if f.start < pos || f.end > text.len() || f.start > f.end {
            continue;
        }
        let (Some(before), true) = (text.get(pos..f.start), text.is_char_boundary(f.end)) else {
            continue;
        };
        out.push_str(before);
        out.push_str(f.category.marker());
        pos = f.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Is `b` part of a word for boundary checks (`[A-Za-z0-9_]`)?
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Does `s` look machine-generated: at least one upper, one lower and one digit? Real
/// tokens are base62/base64 random strings; placeholders (`ghp_xxxx…`), words joined by
/// dashes (`sk-learn-compatible-…`) and hex digests (no upper case) fail this.
fn looks_random(s: &str) -> bool {
    let (mut up, mut low, mut dig) = (false, false, false);
    for b in s.bytes() {
        up |= b.is_ascii_uppercase();
        low |= b.is_ascii_lowercase();
        dig |= b.is_ascii_digit();
    }
    up && low && dig
}
