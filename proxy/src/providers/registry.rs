//! The provider registry: which hosts are LLM providers and which [`Adapter`] speaks
//! for each, plus the one way host names are normalised and matched.
//!
//! Adding a provider is one adapter file and one line in [`PROVIDERS`]: the default
//! inspected hosts (`providers:` in the config), the host → adapter lookup and the
//! names accepted in `providers[].adapter` all come from that table.
//!
//! Host patterns are exact names (`api.openai.com`) or have one `*` label:
//! - leading (`*.openai.azure.com`): one or more labels before the suffix;
//! - inside (`bedrock-runtime.*.amazonaws.com`): exactly one label (a region).
//!
//! Matching is ASCII case-insensitive on normalised names ([`normalize_host`]).

use super::{anthropic, azure, bedrock, gemini, openai, Adapter};

/// One built-in provider: the host patterns it answers on and its adapter.
pub struct Provider {
    /// Host patterns inspected by default.
    pub hosts: &'static [&'static str],
    /// The wire format.
    pub adapter: &'static dyn Adapter,
}

/// Every built-in provider. Adapters listed without hosts are selectable by name only
/// (`openai_compatible` for self-hosted servers).
pub static PROVIDERS: &[Provider] = &[
    provider(&["api.openai.com"], &openai::OPENAI),
    provider(&["api.anthropic.com"], &anthropic::ANTHROPIC),
    provider(&["generativelanguage.googleapis.com"], &gemini::GEMINI),
    provider(&["*.openai.azure.com"], &azure::AZURE_OPENAI),
    provider(
        &[
            "bedrock-runtime.*.amazonaws.com",
            "bedrock-runtime-fips.*.amazonaws.com",
        ],
        &bedrock::BEDROCK,
    ),
    provider(&["api.mistral.ai"], &openai::MISTRAL),
    provider(&["api.groq.com"], &openai::GROQ),
    provider(&["api.deepseek.com"], &openai::DEEPSEEK),
    provider(&["api.x.ai"], &openai::XAI),
    provider(&["openrouter.ai"], &openai::OPENROUTER),
    provider(&["api.together.xyz"], &openai::TOGETHER),
    provider(&["api.fireworks.ai"], &openai::FIREWORKS),
    provider(&[], &openai::OPENAI_COMPATIBLE),
];

const fn provider(hosts: &'static [&'static str], adapter: &'static dyn Adapter) -> Provider {
    Provider { hosts, adapter }
}

/// The built-in host patterns, in table order: the default `providers:` of the config.
pub fn default_hosts() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().flat_map(|p| p.hosts.iter().copied())
}

/// The adapter for a built-in provider host (any spelling [`normalize_host`] accepts;
/// a pattern as written in the config also finds its own adapter).
pub fn adapter_for_host(host: &str) -> Option<&'static dyn Adapter> {
    let host = normalize_host(host);
    PROVIDERS.iter().find_map(|p| {
        p.hosts
            .iter()
            .any(|pattern| {
                pattern.eq_ignore_ascii_case(&host)
                    || HostPattern::parse(pattern).is_ok_and(|pat| pat.matches(&host))
            })
            .then_some(p.adapter)
    })
}

/// The adapter with this label (ASCII case-insensitive), for `providers[].adapter`.
pub fn adapter_by_name(name: &str) -> Option<&'static dyn Adapter> {
    let name = name.trim();
    PROVIDERS
        .iter()
        .map(|p| p.adapter)
        .find(|a| a.name().eq_ignore_ascii_case(name))
}

/// The adapter that answers for a connection whose provider is unknown (OpenAI's error
/// shape is what most SDKs understand).
pub fn default_adapter() -> &'static dyn Adapter {
    &openai::OPENAI
}

/// Every adapter label, for error messages.
pub fn adapter_names() -> Vec<&'static str> {
    PROVIDERS.iter().map(|p| p.adapter.name()).collect()
}

/// A host name as compared everywhere: trimmed, without a `:port` or a trailing dot,
/// lower-case. Bracketed and bare IPv6 literals are kept whole.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = match host.rfind(':') {
        // One colon and not the end of a bracketed literal: `name:port`.
        Some(i) if !host.ends_with(']') && host[..i].find(':').is_none() => &host[..i],
        _ => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A parsed host pattern; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lower-case labels; `None` is the wildcard.
    labels: Vec<Option<String>>,
}

impl HostPattern {
    /// Parses `api.openai.com`, `*.openai.azure.com` or `bedrock-runtime.*.amazonaws.com`.
    ///
    /// # Errors
    /// A message saying what is wrong and showing valid forms: an empty label, a
    /// character other than letters, digits, `-` and `_`, more than one `*`, a `*` that
    /// is not a whole label or is the last label, or a name longer than DNS allows.
    pub fn parse(pattern: &str) -> Result<HostPattern, String> {
        let host = pattern.trim().trim_end_matches('.');
        let shown = || {
            format!(
                "{pattern:?} is not a host name or pattern; use e.g. \"api.openai.com\", \
                 \"*.openai.azure.com\" or \"bedrock-runtime.*.amazonaws.com\""
            )
        };
        if host.is_empty() || host.len() > 253 {
            return Err(shown());
        }
        let mut labels = Vec::new();
        for label in host.split('.') {
            if label == "*" {
                labels.push(None);
                continue;
            }
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(shown());
            }
            labels.push(Some(label.to_ascii_lowercase()));
        }
        let wildcards = labels.iter().filter(|l| l.is_none()).count();
        if wildcards > 1 || labels.last().is_some_and(Option::is_none) || labels.len() < 2 {
            return Err(shown());
        }
        Ok(HostPattern { labels })
    }

    /// Whether the pattern has a `*`.
    pub fn is_wildcard(&self) -> bool {
        self.labels.iter().any(Option::is_none)
    }

    /// Whether `host` (normalised) matches.
    pub fn matches(&self, host: &str) -> bool {
        let got: Vec<&str> = host.split('.').collect();
        let want = &self.labels;
        let same = |w: &Option<String>, g: &str| w.as_deref().is_none_or(|w| w == g);
        match want.first() {
            // Leading `*`: one or more labels, then the suffix.
            Some(None) => {
                let suffix = &want[1..];
                got.len() > suffix.len()
                    && got[got.len() - suffix.len()..]
                        .iter()
                        .zip(suffix)
                        .all(|(g, w)| same(w, g))
                    && got[..got.len() - suffix.len()]
                        .iter()
                        .all(|g| !g.is_empty())
            }
            // Exact, or one label anywhere else.
            _ => {
                got.len() == want.len()
                    && got
                        .iter()
                        .zip(want)
                        .all(|(g, w)| same(w, g) && !g.is_empty())
            }
        }
    }

    /// How specific the pattern is: exact patterns before wildcards, longer before shorter.
    pub fn specificity(&self) -> (bool, usize) {
        (!self.is_wildcard(), self.labels.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_documented() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("api.openai.com").matches("api.openai.com"));
        assert!(!p("api.openai.com").matches("x.api.openai.com"));
        let azure = p("*.openai.azure.com");
        assert!(azure.matches("myres.openai.azure.com"));
        assert!(azure.matches("a.b.openai.azure.com"));
        assert!(!azure.matches("openai.azure.com"));
        assert!(!azure.matches("evil-openai.azure.com"));
        let bedrock = p("bedrock-runtime.*.amazonaws.com");
        assert!(bedrock.matches("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!bedrock.matches("bedrock-runtime.amazonaws.com"));
        assert!(!bedrock.matches("bedrock-runtime.a.b.amazonaws.com"));
        assert!(!bedrock.matches("bedrock.us-east-1.amazonaws.com"));
        for bad in ["", "*", "a..b", "*.*.com", "api.*", "a b.com", "com"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hosts_are_normalised_one_way() {
        assert_eq!(normalize_host("Api.X.ai.:8443"), "api.x.ai");
        assert_eq!(normalize_host(" api.openai.com. "), "api.openai.com");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
    }

    #[test]
    fn every_builtin_host_finds_its_adapter_and_names_are_unique() {
        for p in PROVIDERS {
            for host in p.hosts {
                HostPattern::parse(host).unwrap();
                assert_eq!(adapter_for_host(host).unwrap().name(), p.adapter.name());
            }
        }
        let names = adapter_names();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(
            adapter_for_host("RES.openai.azure.com:443").unwrap().name(),
            "azure_openai"
        );
        assert!(adapter_for_host("example.com").is_none());
    }
}
