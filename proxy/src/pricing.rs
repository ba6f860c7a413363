//! The price table and the cost of an interaction.
//!
//! Prices live in `pricing.yaml` at the crate root, compiled into the binary
//! ([`PriceTable::embedded`]); [`PriceTable::from_yaml`] parses and validates the same
//! format from elsewhere. A price is USD per million tokens for input, output and
//! (optionally) cached input. [`PriceTable::lookup`] resolves dated or suffixed model
//! names to their family (`gpt-4o-2024-08-06` → `gpt-4o`, longest match wins) and
//! [`PriceTable::cost_usd`] applies a price to a [`Usage`].
//!
//! What this is not: a billing system. It has no tiers (long-context surcharges,
//! batch or priority discounts), no per-image or per-second prices, and charges
//! cache writes at the plain input rate. Costs are estimates for attribution and
//! budgets; the provider's invoice is authoritative.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::providers::{Adapter, Usage};

/// Per-million-token prices of one model, in USD.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    /// Uncached input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output tokens, reasoning included.
    pub output_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache; the input price when absent.
    pub cached_input_per_mtok: Option<f64>,
}

/// Why a price table was refused. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The text is not YAML of the expected shape.
    #[error(
        "price table is not valid: {0}; expected `prices_read: \"YYYY-MM-DD\"` and a \
         `models:` list of {{provider, model, input_per_mtok, output_per_mtok, \
         cached_input_per_mtok (optional)}}"
    )]
    Yaml(#[from] serde_yaml_ng::Error),
    /// `prices_read` is not a date.
    #[error("prices_read {0:?} is not a YYYY-MM-DD date; set it to the day the prices were read")]
    BadDate(String),
    /// An entry has an empty provider or model.
    #[error("models[{index}]: provider and model must both be non-empty")]
    EmptyName {
        /// Position in `models`.
        index: usize,
    },
    /// A price is negative, infinite or NaN.
    #[error(
        "models[{index}] ({provider}/{model}): {field} is {value}; prices are USD per \
         million tokens and must be finite and not negative"
    )]
    BadPrice {
        /// Position in `models`.
        index: usize,
        /// The entry's provider.
        provider: String,
        /// The entry's model.
        model: String,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The same provider and model appear twice.
    #[error("models[{index}]: {provider}/{model} is already listed at models[{first}]; keep one")]
    Duplicate {
        /// Position of the repeat.
        index: usize,
        /// Position of the first entry.
        first: usize,
        /// The provider.
        provider: String,
        /// The model.
        model: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    prices_read: String,
    models: Vec<EntryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    provider: String,
    model: String,
    input_per_mtok: f64,
    output_per_mtok: f64,
    #[serde(default)]
    cached_input_per_mtok: Option<f64>,
}

#[derive(Debug, Clone)]
struct Entry {
    provider: String,
    model: String,
    price: Price,
}

/// Model prices by provider, with family resolution.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices_read: String,
    entries: Vec<Entry>,
}

impl PriceTable {
    /// The table compiled in from `pricing.yaml`, parsed once.
    ///
    /// # Panics
    ///
    /// Never at run time in a tested build: the embedded file is a build input that
    /// `pricing::tests::embedded_table_is_valid` checks.
    pub fn embedded() -> &'static PriceTable {
        static TABLE: OnceLock<PriceTable> = OnceLock::new();
        TABLE.get_or_init(|| {
            PriceTable::from_yaml(include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/pricing.yaml"
            )))
            .expect("embedded pricing.yaml is invalid; run the pricing unit tests")
        })
    }

    /// Parses and validates a price table.
    pub fn from_yaml(s: &str) -> Result<PriceTable, PricingError> {
        let file: TableFile = serde_yaml_ng::from_str(s)?;
        let prices_read = file.prices_read.trim().to_owned();
        if !is_date(&prices_read) {
            return Err(PricingError::BadDate(prices_read));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(file.models.len());
        for (index, e) in file.models.into_iter().enumerate() {
            let provider = e.provider.trim().to_owned();
            let model = e.model.trim().to_owned();
            if provider.is_empty() || model.is_empty() {
                return Err(PricingError::EmptyName { index });
            }
            let price = Price {
                input_per_mtok: e.input_per_mtok,
                output_per_mtok: e.output_per_mtok,
                cached_input_per_mtok: e.cached_input_per_mtok,
            };
            let fields = [
                ("input_per_mtok", Some(price.input_per_mtok)),
                ("output_per_mtok", Some(price.output_per_mtok)),
                ("cached_input_per_mtok", price.cached_input_per_mtok),
            ];
            for (field, value) in fields {
                if let Some(value) = value.filter(|v| !v.is_finite() || *v < 0.0) {
                    return Err(PricingError::BadPrice {
                        index,
                        provider,
                        model,
                        field,
                        value,
                    });
                }
            }
            if let Some(first) = entries.iter().position(|x| {
                x.provider.eq_ignore_ascii_case(&provider) && x.model.eq_ignore_ascii_case(&model)
            }) {
                return Err(PricingError::Duplicate {
                    index,
                    first,
                    provider,
                    model,
                });
            }
            entries.push(Entry {
                provider,
                model,
                price,
            });
        }
        Ok(PriceTable {
            prices_read,
            entries,
        })
    }

    /// The day the prices were read from the providers' pages (`YYYY-MM-DD`).
    pub fn prices_read(&self) -> &str {
        &self.prices_read
    }

    /// The price of `model` at `provider`.
    ///
    /// An exact (ASCII case-insensitive) match wins; otherwise the longest listed
    /// model that is a prefix of `model` followed by `-` (so `gpt-4o-2024-08-06` is
    /// `gpt-4o` and `gpt-4o-mini-2024-07-18` is `gpt-4o-mini`). A `models/` prefix
    /// (Gemini) is ignored, and so is what [`Adapter::price_model`] strips (Bedrock's
    /// inference-profile prefixes). A provider with no price of its own for the model gets the
    /// price of its [`Adapter::price_fallback`] (Azure OpenAI deployments and
    /// OpenAI-compatible gateways: OpenAI's). `None` for an unknown model.
    pub fn lookup(&self, adapter: &dyn Adapter, model: &str) -> Option<&Price> {
        self.entry(adapter, model).map(|e| &e.price)
    }

    /// The price table's name for `model`'s family (`gpt-4o` for `gpt-4o-2024-08-06`),
    /// found as [`Self::lookup`] finds the price: a bounded set, fit for a metric label
    /// (a client can send any model string; it must not become a label).
    pub fn family(&self, adapter: &dyn Adapter, model: &str) -> Option<&str> {
        self.entry(adapter, model).map(|e| e.model.as_str())
    }

    fn entry(&self, adapter: &dyn Adapter, model: &str) -> Option<&Entry> {
        let model = model.trim();
        let model = model.strip_prefix("models/").unwrap_or(model);
        let model = adapter.price_model(model);
        self.lookup_in(adapter.name(), model).or_else(|| {
            adapter
                .price_fallback()
                .and_then(|other| self.lookup_in(other, model))
        })
    }

    fn lookup_in(&self, provider: &str, model: &str) -> Option<&Entry> {
        let mut best: Option<&Entry> = None;
        for e in self
            .entries
            .iter()
            .filter(|e| e.provider.eq_ignore_ascii_case(provider))
        {
            if e.model.eq_ignore_ascii_case(model) {
                return Some(e);
            }
            let is_family = model.len() > e.model.len()
                && model.is_char_boundary(e.model.len())
                && model[..e.model.len()].eq_ignore_ascii_case(&e.model)
                && model.as_bytes()[e.model.len()] == b'-';
            if is_family && best.is_none_or(|b| e.model.len() > b.model.len()) {
                best = Some(e);
            }
        }
        best
    }

    /// The cost in USD of `usage` for `model` at `provider`, or `None` when the model
    /// has no price. Missing counts are taken as zero.
    ///
    /// Cached tokens are charged at the cached rate. Where the provider counts them
    /// inside `input_tokens` ([`Adapter::cached_within_input`]; every provider but
    /// Anthropic, see [`Usage`]) they are subtracted from the input first; otherwise they
    /// are added. Cache writes are charged as plain input.
    pub fn cost_usd(&self, adapter: &dyn Adapter, model: &str, usage: &Usage) -> Option<f64> {
        let p = self.lookup(adapter, model)?;
        let input = usage.input_tokens.unwrap_or(0);
        let output = usage.output_tokens.unwrap_or(0);
        let cached = usage.cached_tokens.unwrap_or(0);
        let uncached = if adapter.cached_within_input() {
            input.saturating_sub(cached)
        } else {
            input
        };
        let cached_rate = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
        let micro_usd = uncached as f64 * p.input_per_mtok
            + cached as f64 * cached_rate
            + output as f64 * p.output_per_mtok;
        Some(micro_usd / 1e6)
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        s.get(r.clone())
            .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    matches!(
        (digits(0..4), digits(5..7), digits(8..10)),
        (Some(_), Some(1..=12), Some(1..=31))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str) -> &'static dyn Adapter {
        crate::providers::adapter_by_name(name).unwrap()
    }

    fn usage(input: u64, output: u64, cached: u64) -> Usage {
        Usage {
            input_tokens: Some(input),
            output_tokens: Some(output),
            cached_tokens: Some(cached),
            ..Usage::default()
        }
    }

    const SMALL: &str = r#"
prices_read: "2026-11-23"
models:
  - {provider: openai, model: gpt-4o, input_per_mtok: 2.5, output_per_mtok: 10, cached_input_per_mtok: 1.25}
  - {provider: openai, model: gpt-4o-mini, input_per_mtok: 0.15, output_per_mtok: 0.6}
  - {provider: anthropic, model: claude-sonnet-4, input_per_mtok: 3, output_per_mtok: 15, cached_input_per_mtok: 0.3}
  - {provider: anthropic, model: claude-sonnet-4-5, input_per_mtok: 3.5, output_per_mtok: 16}
  - {provider: gemini, model: gemini-2.5-flash, input_per_mtok: 0.3, output_per_mtok: 2.5, cached_input_per_mtok: 0.03}
"#;

    #[test]
    fn embedded_table_is_valid() {
        let t = PriceTable::embedded();
        assert!(is_date(t.prices_read()));
        for (provider, model) in [
            ("openai", "gpt-4o"),
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-4.1"),
            ("openai", "gpt-4.1-mini"),
            ("openai", "gpt-4.1-nano"),
            ("openai", "o3"),
            ("openai", "o4-mini"),
            ("openai", "gpt-5"),
            ("openai", "gpt-5-mini"),
            ("openai", "text-embedding-3-small"),
            ("openai", "text-embedding-3-large"),
            ("anthropic", "claude-opus-4-1"),
            ("anthropic", "claude-sonnet-4-5"),
            ("anthropic", "claude-sonnet-4"),
            ("anthropic", "claude-haiku-4-5"),
            ("anthropic", "claude-3-5-haiku"),
            ("gemini", "gemini-2.5-pro"),
            ("gemini", "gemini-2.5-flash"),
            ("gemini", "gemini-2.0-flash"),
            ("mistral", "mistral-large-latest"),
            ("deepseek", "deepseek-chat"),
            ("groq", "llama-3.3-70b-versatile"),
            ("xai", "grok-4"),
            ("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
            ("bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0"),
        ] {
            assert!(t.lookup(a(provider), model).is_some(), "{provider}/{model}");
        }
        // Dated ids resolve to the right family, not a shorter one.
        let mini = t.lookup(a("openai"), "gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!(mini, t.lookup(a("openai"), "gpt-4o-mini").unwrap());
        assert_ne!(mini, t.lookup(a("openai"), "gpt-4o").unwrap());
        let s45 = t
            .lookup(a("anthropic"), "claude-sonnet-4-5-20250929")
            .unwrap();
        assert_eq!(s45, t.lookup(a("anthropic"), "claude-sonnet-4-5").unwrap());
        let opus45 = t
            .lookup(a("anthropic"), "claude-opus-4-5-20251101")
            .unwrap();
        assert_eq!(opus45.input_per_mtok, 5.0);
    }

    #[test]
    fn exact_then_longest_dash_prefix() {
        let t = PriceTable::from_yaml(SMALL).unwrap();
        assert_eq!(t.prices_read(), "2026-11-23");
        assert_eq!(t.lookup(a("openai"), "gpt-4o").unwrap().input_per_mtok, 2.5);
        assert_eq!(t.lookup(a("openai"), "GPT-4o").unwrap().input_per_mtok, 2.5);
        assert_eq!(
            t.lookup(a("openai"), "gpt-4o-2024-08-06")
                .unwrap()
                .input_per_mtok,
            2.5
        );
        assert_eq!(
            t.lookup(a("openai"), "gpt-4o-mini").unwrap().input_per_mtok,
            0.15
        );
        assert_eq!(
            t.lookup(a("openai"), "gpt-4o-mini-2024-07-18")
                .unwrap()
                .input_per_mtok,
            0.15
        );
        let s45 = t
            .lookup(a("anthropic"), "claude-sonnet-4-5-20250929")
            .unwrap();
        assert_eq!(s45.input_per_mtok, 3.5);
        let s4 = t
            .lookup(a("anthropic"), "claude-sonnet-4-20250514")
            .unwrap();
        assert_eq!(s4.input_per_mtok, 3.0);
        // A prefix without `-` after it is not the family.
        assert!(t.lookup(a("openai"), "gpt-4omni").is_none());
        assert!(t.lookup(a("openai"), "gpt-4").is_none());
        assert!(t.lookup(a("openai"), "gpt-4o.1").is_none());
        // Gemini's `models/` prefix is ignored.
        assert!(t.lookup(a("gemini"), "models/gemini-2.5-flash").is_some());
        // Unknown model, unknown provider.
        assert!(t.lookup(a("openai"), "no-such-model").is_none());
        // The provider matters: anthropic has no gpt-4o.
        assert!(t.lookup(a("anthropic"), "gpt-4o").is_none());
    }

    #[test]
    fn openai_format_providers_fall_back_to_openai_prices() {
        let t = PriceTable::from_yaml(SMALL).unwrap();
        assert_eq!(
            t.lookup(a("azure_openai"), "gpt-4o")
                .unwrap()
                .input_per_mtok,
            2.5
        );
        assert_eq!(
            t.lookup(a("openai_compatible"), "gpt-4o-mini")
                .unwrap()
                .input_per_mtok,
            0.15
        );
        // Not for other formats.
        assert!(t.lookup(a("gemini"), "gpt-4o").is_none());
    }

    #[test]
    fn bedrock_profiles_priced_as_their_model_with_cache_reads_apart() {
        let t = PriceTable::embedded();
        let bedrock = a("bedrock");
        let haiku = t
            .lookup(bedrock, "anthropic.claude-3-5-haiku-20241022-v1:0")
            .unwrap();
        assert_eq!(haiku.input_per_mtok, 0.80);
        let s45 = t
            .lookup(bedrock, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
            .unwrap();
        assert_eq!(
            s45,
            t.lookup(bedrock, "anthropic.claude-sonnet-4-5").unwrap()
        );
        // Bedrock's own names only: `claude-3-5-haiku` is Anthropic's.
        assert!(t.lookup(bedrock, "claude-3-5-haiku").is_none());
        // 1M uncached input, 1M cache reads (apart), 1M output.
        let cost = t
            .cost_usd(
                bedrock,
                "anthropic.claude-3-5-haiku-20241022-v1:0",
                &usage(1_000_000, 1_000_000, 1_000_000),
            )
            .unwrap();
        assert!((cost - (0.80 + 0.08 + 4.00)).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn cost_arithmetic() {
        let t = PriceTable::from_yaml(SMALL).unwrap();
        // OpenAI: 1M input of which 400k cached, 100k output.
        // 600k * 2.5 + 400k * 1.25 + 100k * 10 = 1.5 + 0.5 + 1.0 = $3.00
        let c = t
            .cost_usd(
                a("openai"),
                "gpt-4o-2024-08-06",
                &usage(1_000_000, 100_000, 400_000),
            )
            .unwrap();
        assert!((c - 3.0).abs() < 1e-9, "{c}");
        // No cached rate: cached tokens cost plain input. 1000*0.15 + 500*0.6 = 450 µ$
        let c = t
            .cost_usd(a("openai"), "gpt-4o-mini", &usage(1000, 500, 200))
            .unwrap();
        assert!((c - 0.00045).abs() < 1e-12, "{c}");
        // Anthropic: cache reads are *not* inside input_tokens.
        // 1000 * 3 + 2000 * 0.3 + 100 * 15 = 3000 + 600 + 1500 = 5100 µ$
        let c = t
            .cost_usd(
                a("anthropic"),
                "claude-sonnet-4-20250514",
                &usage(1000, 100, 2000),
            )
            .unwrap();
        assert!((c - 0.0051).abs() < 1e-12, "{c}");
        // Gemini counts cached inside the prompt: (10k - 4k) * 0.3 + 4k * 0.03 + 1k * 2.5
        // = 1800 + 120 + 2500 = 4420 µ$
        let c = t
            .cost_usd(
                a("gemini"),
                "gemini-2.5-flash",
                &usage(10_000, 1_000, 4_000),
            )
            .unwrap();
        assert!((c - 0.00442).abs() < 1e-12, "{c}");
        // Cached above input (inconsistent report) never goes negative.
        let c = t
            .cost_usd(a("openai"), "gpt-4o", &usage(10, 0, 20))
            .unwrap();
        assert!(c >= 0.0);
        // No usage at all: known model, zero cost.
        assert_eq!(
            t.cost_usd(a("openai"), "gpt-4o", &Usage::default()),
            Some(0.0)
        );
        assert_eq!(t.cost_usd(a("openai"), "nope", &usage(1, 1, 0)), None);
    }

    #[test]
    fn bad_tables_say_what_to_fix() {
        let err = |s: &str| PriceTable::from_yaml(s).unwrap_err().to_string();
        let e = err("prices_read: [\nmodels: {");
        assert!(e.contains("not valid"), "{e}");
        let e = err("prices_read: \"2025-13-01\"\nmodels: []\n");
        assert!(e.contains("YYYY-MM-DD"), "{e}");
        let e = err("models: []\n");
        assert!(e.contains("prices_read"), "{e}");
        let e = err(
            "prices_read: \"2025-01-01\"\nmodels:\n  - {provider: openai, model: x, input_per_mtok: -1, output_per_mtok: 1}\n",
        );
        assert!(
            e.contains("models[0] (openai/x): input_per_mtok is -1"),
            "{e}"
        );
        let e = err(
            "prices_read: \"2025-01-01\"\nmodels:\n  - {provider: openai, model: x, input_per_mtok: 1, output_per_mtok: 1}\n  - {provider: OpenAI, model: X, input_per_mtok: 1, output_per_mtok: 1}\n",
        );
        assert!(
            e.contains("models[1]: OpenAI/X is already listed at models[0]"),
            "{e}"
        );
        let e = err(
            "prices_read: \"2025-01-01\"\nmodels:\n  - {provider: openai, model: x, input_per_mtok: 1, output_per_mtok: 1, input_per_mtoks: 2}\n",
        );
        assert!(e.contains("input_per_mtoks"), "{e}");
        let e = err(
            "prices_read: \"2025-01-01\"\nmodels:\n  - {provider: \"\", model: x, input_per_mtok: 1, output_per_mtok: 1}\n",
        );
        assert!(e.contains("models[0]: provider and model"), "{e}");
        let e = err(
            "prices_read: \"2025-01-01\"\nmodels:\n  - {provider: openai, model: x, input_per_mtok: 1}\n",
        );
        assert!(e.contains("output_per_mtok"), "{e}");
    }
}
