//! Prompt-injection and jailbreak heuristics.
//!
//! The text is first *normalised*: ASCII letters lower-cased, digits kept, the few
//! punctuation bytes that make up chat-template delimiters (`< > / # [ ] |`) kept, and
//! everything else (spaces, other punctuation, non-ASCII) dropped. So `IGNORE  previous
//! Instructions`, `ignore-previous-instructions` and `i g n o r e previous instructions`
//! all read `ignorepreviousinstructions`. Each phrase family is one regex over that view.
//!
//! The score is a noisy-OR of the weights of the families that matched,
//! `1 − Π(1 − wᵢ)`: one strong family ("ignore previous instructions", 0.9) crosses the
//! default threshold of 0.5 alone, weak ones ("stay in character", a `### Instruction`
//! header) only together. Weights were set so that benign prompts in the corpus that
//! *mention* instructions, system prompts or role-play stay under the threshold.
//!
//! Not detected: paraphrases outside the families, other languages, homoglyph or
//! leetspeak obfuscation, instructions hidden in encoded payloads (only the request to
//! decode-and-obey is caught), indirect injection that reads as ordinary content.

use regex::bytes::Regex;

/// Default score threshold (see [`super::GuardrailConfig::injection_threshold`]).
pub(super) const DEFAULT_THRESHOLD: f32 = 0.5;

/// The result of [`super::Scanner::injection_score`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InjectionVerdict {
    /// Noisy-OR of the matched family weights, in `[0, 1]`.
    pub score: f32,
    /// Names of the matched phrase families, in this order: `ignore_previous_instructions`,
    /// `persona_override` (DAN, developer mode), `system_prompt_exfiltration`,
    /// `unrestricted_roleplay`, `encoded_instructions` (decode-and-obey),
    /// `delimiter_injection` (chat-template tokens), `roleplay_escape`, `character_lock`,
    /// `override_framing`, `instruction_header`.
    pub families: Vec<&'static str>,
}

/// (family, weight, pattern over the normalised view). Patterns are verbose (`(?x)`):
/// whitespace is layout only, since the view has none. Filler gaps like `[a-z]{0,20}?`
/// stand for the words the spaces-removed view glues together ("all of the").
const FAMILIES: &[(&str, f32, &str)] = &[
    (
        "ignore_previous_instructions",
        0.9,
        // The object must be instructions/prompt/rules: "ignore the previous error" is
        // a normal thing to say.
        r"(?x)
        (?:ignore|disregard|forget|skip|override|bypass|neglect|dismiss) [a-z]{0,20}?
        (?:previous|prior|above|earlier|preceding|former|initial|original|system|all|any|your)
        [a-z]{0,12}?
        (?:instructions?|prompts?|rules|directions|directives?|guidelines|guardrails
          |constraints|programming)",
    ),
    (
        "persona_override",
        0.85,
        // Named jailbreak personas and modes; bare "developer" or "mode" never count.
        r"(?x)
          youarenow (?:dan|stan|dude|aim|evil|unfiltered|jailbroken|free|unchained|unrestricted)
        | doanythingnow
        | (?:enable|activate|enter|switchto|turnon|unlock) (?:the)? developermode
        | developermode (?:enabled|activated|on)
        | dan (?:mode|prompt|jailbreak)
        | jailbreak (?:mode|enabled|activated)
        | godmode (?:enabled|activated)
        | (?:system|admin) override",
    ),
    (
        "system_prompt_exfiltration",
        0.8,
        // Needs "your": asking *the model* for *its* prompt, not discussing prompts.
        r"(?x)
          (?:reveal|print|show|display|output|repeat|leak|dump|recite|tellme|giveme|share
            |whatis|whatare|whats|copy|spitout)
          (?:me)? (?:all|back|out)? (?:of)? your
          (?:full|entire|exact|original|initial|hidden|secret|complete|verbatim|whole)*
          (?:system|initial|hidden|original|secret|developer|internal|preprogrammed|confidential)
          (?:prompt|instructions|message|rules|guidelines)
        | (?:repeat|print|output|reveal) (?:all)? (?:of)? (?:the)?
          (?:text|words|everything|instructions) (?:above|before) (?:this|verbatim|starting)",
    ),
    (
        "unrestricted_roleplay",
        0.75,
        // A role *and* the absence of limits; "act as a reviewer" alone is benign.
        r"(?x)
          (?:pretend|actas|roleplayas|behaveas|behavelike|youarean?|respondas|simulatean?)
          [a-z]{0,40}?
          (?:no|without|freefrom|freeof|unboundby|notboundby|ignoring|beyond|unconstrainedby)
          (?:any|all|the|your|its|ethical|moral|content|safety)*
          (?:restrictions|limits|limitations|filters|filtering|censorship|boundaries|ethics
            |morals|policies|guidelines|constraints|rules)
        | (?:unfiltered|uncensored|unrestricted|amoral)
          (?:ai|mode|assistant|chatbot|model|persona|version)",
    ),
    (
        "encoded_instructions",
        0.6,
        // Decoding is fine; decoding *and obeying* is the attack.
        r"(?x)
          (?:decode|decrypt|deobfuscate|unscramble|reverse)
          (?:this|the|following|it|below|message|string|text|payload)*
          (?:base64|rot13|hex|binary|morse|caesar)? [a-z0-9]{0,24}?
          (?:and|then) (?:then)? (?:follow|execute|obey|carryout|acton|comply)
        | (?:base64|rot13|hex|encoded) [a-z]{0,20}? (?:instructions?|commands?|payload)
          (?:to|and) (?:follow|execute|obey)",
    ),
    (
        "delimiter_injection",
        0.6,
        // Chat-template control tokens have no business in user content.
        r"(?x)
          </(?:system|sys|instructions?)> | <(?:system|sys)>
        | <\|(?:imstart|imend|system|endoftext|startofturn|endofturn)\|>
        | \[/?inst\] | <</?sys>> | \[system\]",
    ),
    (
        "roleplay_escape",
        0.45,
        r"(?x)
          youarenolonger (?:an?)? (?:ai|assistant|chatgpt|claude|bound|restricted|languagemodel)
        | fromnowonyou (?:will|are|must|shall) (?:respond|act|answer|be|only)
        | (?:forget|abandon) (?:that)? youarean? (?:ai|assistant|languagemodel)",
    ),
    (
        "character_lock",
        0.4,
        // Creative writing says this too; only counts alongside another family.
        r"(?:never)?breakcharacter|stayincharacter|remainincharacter",
    ),
    (
        "override_framing",
        0.35,
        r"(?x)
          (?:new|updated|real|actual|true|secret) (?:system)?
          (?:instructions|rules|directive|objective) (?:are|is)?
        | theabove (?:was|is) (?:just)? a (?:test|joke|lie|distraction)",
    ),
    (
        "instruction_header",
        0.35,
        // Markdown headers are common in benign prompts; only a weak signal.
        r"\#{2,}(?:system|instruction|instructions|newinstructions|admin|override)(?:prompt|message)?",
    ),
];

#[derive(Debug)]
pub(super) struct Detector {
    families: Vec<(&'static str, f32, Regex)>,
}

impl Detector {
    pub(super) fn new() -> Self {
        let families = FAMILIES
            .iter()
            .map(|(name, w, p)| {
                (
                    *name,
                    *w,
                    Regex::new(p).expect("injection pattern compiles"),
                )
            })
            .collect();
        Detector { families }
    }

    /// The verdict and the original-text spans of every family match.
    pub(super) fn evaluate(&self, text: &str) -> (InjectionVerdict, Vec<(usize, usize)>) {
        let norm = normalise(text);
        let mut families = Vec::new();
        let mut norm_spans = Vec::new();
        let mut keep = 1.0f32;
        for (name, w, re) in &self.families {
            let before = norm_spans.len();
            norm_spans.extend(re.find_iter(&norm).map(|m| (m.start(), m.end())));
            if norm_spans.len() > before {
                families.push(*name);
                keep *= 1.0 - w;
            }
        }
        let score = (1.0 - keep).clamp(0.0, 1.0);
        let spans = to_original(text, &norm_spans);
        (InjectionVerdict { score, families }, spans)
    }
}

/// Normalised byte for each input byte, 0 = dropped. A table keeps the hot loop to a
/// load and a conditional push.
static NORM: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphanumeric() {
            b.to_ascii_lowercase()
        } else if matches!(b, b'<' | b'>' | b'/' | b'#' | b'[' | b']' | b'|') {
            b
        } else {
            0
        };
        c += 1;
    }
    t
};

/// The normalised view (see the module docs). Only ASCII survives, so every normalised
/// byte stands for exactly one ASCII byte of `text`.
fn normalise(text: &str) -> Vec<u8> {
    // Branch-free compaction: always write, advance only for kept bytes. Whether a byte
    // is kept (a space every few letters) is unpredictable, so a branch would mispredict
    // constantly.
    let mut norm = vec![0u8; text.len()];
    let mut n = 0;
    for &c in text.as_bytes() {
        let m = NORM[usize::from(c)];
        if let Some(slot) = norm.get_mut(n) {
            *slot = m;
        }
        n += usize::from(m != 0);
    }
    norm.truncate(n);
    norm
}

/// Maps normalised `[start, end)` spans back to byte spans of `text`. Matches are rare,
/// so this re-walks `text` once instead of keeping an offset table for every scan.
fn to_original(text: &str, spans: &[(usize, usize)]) -> Vec<(usize, usize)> {
    if spans.is_empty() {
        return Vec::new();
    }
    let mut kept_at = Vec::new(); // original offset of the k-th kept byte
    for (i, c) in text.bytes().enumerate() {
        if NORM[usize::from(c)] != 0 {
            kept_at.push(i);
        }
    }
    spans
        .iter()
        .map(|&(s, e)| (kept_at[s], kept_at[e - 1] + 1))
        .collect()
}
