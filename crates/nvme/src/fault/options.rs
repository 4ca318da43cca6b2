//! The configuration of a `fault:` device and its URI syntax: [`FaultConfig`], parsed from and
//! rendered back to the `OPTIONS` part of `fault:[OPTIONS+]INNER_URI`.

use super::random::clamp_probability;
use super::rules::{EioRule, EioTrigger, FaultOps};
use crate::error::NvmeError;
use crate::uri::SCHEMES;
use crate::uri::uri_error;
use bluepoll_base::options::KeyValues;

/// How a `fault:` device misbehaves. [`Default`] is a volatile write cache and no faults.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Whether completed writes stay volatile until a Flush (`cache=on`).
    pub volatile_cache: bool,
    /// At a power cut, the probability an unflushed write persists whole.
    pub survive: f64,
    /// At a power cut, the probability an unflushed multi-block write persists in part.
    pub torn: f64,
    /// Probability a write reports success but is discarded.
    pub drop_writes: f64,
    /// Probability a write is stored with one bit flipped.
    pub corrupt_writes: f64,
    /// Error rules armed from the start.
    pub eio: Vec<EioRule>,
}

impl Default for FaultConfig {
    fn default() -> FaultConfig {
        FaultConfig {
            seed: 0,
            volatile_cache: true,
            survive: 0.0,
            torn: 0.0,
            drop_writes: 0.0,
            corrupt_writes: 0.0,
            eio: Vec::new(),
        }
    }
}

pub(super) fn split_options<'a>(uri: &str, rest: &'a str) -> Result<(&'a str, &'a str), NvmeError> {
    // Options are key=value and keys hold no ':', so a leading `scheme:` can only be the inner
    // URI — which lets it contain '+' (a nested fault:, a path) without options in front.
    let starts_with_scheme = rest
        .split_once(':')
        .is_some_and(|(scheme, _)| SCHEMES.split(", ").any(|known| known == scheme));
    if starts_with_scheme {
        return Ok(("", rest));
    }
    match rest.split_once('+') {
        Some((_, "")) => Err(NvmeError::uri(uri, "nothing after '+': missing inner URI")),
        Some(split) => Ok(split),
        None => Err(NvmeError::uri(
            uri,
            format!(
                "expected fault:[OPTIONS+]INNER_URI, e.g. fault:seed=1,torn=0.5+mem:1G \
                 (inner schemes: {SCHEMES})"
            ),
        )),
    }
}

impl FaultConfig {
    pub(super) fn parse(uri: &str, options: &str) -> Result<FaultConfig, NvmeError> {
        let mut config = FaultConfig::default();
        if options.is_empty() {
            return Ok(config);
        }
        let bad = |key: &str, why: String| NvmeError::uri(uri, format!("option '{key}': {why}"));
        let mut eio_ops = None;
        let mut triggers = Vec::new();
        let values = KeyValues::list(options, ',', "option").map_err(|e| uri_error(uri, e))?;
        for &(key, value) in values.pairs() {
            match key {
                "seed" => config.seed = parse_u64(value).map_err(|e| bad(key, e))?,
                "cache" => {
                    config.volatile_cache = match value {
                        "on" | "1" | "true" | "yes" => true,
                        "off" | "0" | "false" | "no" => false,
                        _ => return Err(bad(key, format!("'{value}' is not on/off"))),
                    }
                }
                "survive" => config.survive = parse_probability(value).map_err(|e| bad(key, e))?,
                "torn" => config.torn = parse_probability(value).map_err(|e| bad(key, e))?,
                "drop_writes" => {
                    config.drop_writes = parse_probability(value).map_err(|e| bad(key, e))?
                }
                "corrupt_writes" => {
                    config.corrupt_writes = parse_probability(value).map_err(|e| bad(key, e))?
                }
                "eio_nth" => triggers.push(EioTrigger::Nth(
                    parse_count(value).map_err(|e| bad(key, e))?,
                )),
                "eio_every" => triggers.push(EioTrigger::Every(
                    parse_count(value).map_err(|e| bad(key, e))?,
                )),
                "eio_lba" => {
                    let (first, last) = value
                        .split_once('-')
                        .ok_or_else(|| bad(key, format!("'{value}' is not START-END")))?;
                    let first = parse_u64(first).map_err(|e| bad(key, e))?;
                    let last = parse_u64(last).map_err(|e| bad(key, e))?;
                    if first > last {
                        return Err(bad(key, format!("start {first} is after end {last}")));
                    }
                    triggers.push(EioTrigger::Lbas { first, last });
                }
                "eio_on" => {
                    eio_ops = Some(FaultOps::parse(value).ok_or_else(|| {
                        bad(
                            key,
                            format!("'{value}' is not one of read, write, flush, any"),
                        )
                    })?)
                }
                _ => {
                    return Err(NvmeError::uri(
                        uri,
                        format!(
                            "unknown option '{key}' (options: seed, cache, survive, torn, \
                             drop_writes, corrupt_writes, eio_nth, eio_every, eio_lba, eio_on)"
                        ),
                    ));
                }
            }
        }
        if eio_ops.is_some() && triggers.is_empty() {
            return Err(bad(
                "eio_on",
                "needs eio_nth, eio_every or eio_lba to say which commands fail".into(),
            ));
        }
        let ops = eio_ops.unwrap_or(FaultOps::Any);
        config.eio = triggers
            .into_iter()
            .map(|trigger| EioRule { ops, trigger })
            .collect();
        Ok(config)
    }

    /// The options part of a URI that opens a device configured like this.
    pub(super) fn to_options(&self) -> String {
        let mut options = vec![
            format!("seed={}", self.seed),
            format!("cache={}", if self.volatile_cache { "on" } else { "off" }),
        ];
        for (key, value) in [
            ("survive", self.survive),
            ("torn", self.torn),
            ("drop_writes", self.drop_writes),
            ("corrupt_writes", self.corrupt_writes),
        ] {
            let value = clamp_probability(value);
            if value > 0.0 {
                options.push(format!("{key}={value}"));
            }
        }
        // Rules that can never fire have no URI spelling; leaving them out changes nothing.
        let rules: Vec<&EioRule> = self
            .eio
            .iter()
            .filter(|rule| match rule.trigger {
                EioTrigger::Nth(n) | EioTrigger::Every(n) => n > 0,
                EioTrigger::Lbas { first, last } => first <= last,
            })
            .collect();
        if let Some(first) = rules.first()
            && rules.iter().all(|rule| rule.ops == first.ops)
        {
            for rule in &rules {
                options.push(match rule.trigger {
                    EioTrigger::Nth(n) => format!("eio_nth={n}"),
                    EioTrigger::Every(n) => format!("eio_every={n}"),
                    EioTrigger::Lbas { first, last } => format!("eio_lba={first}-{last}"),
                });
            }
            options.push(format!("eio_on={}", first.ops.name()));
        }
        options.join(",")
    }
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("'{text}' is not a whole number"))
}

fn parse_count(text: &str) -> Result<u64, String> {
    match parse_u64(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        Ok(_) => Err(format!("{text} is not a probability between 0 and 1")),
        Err(_) => Err(format!("'{text}' is not a number")),
    }
}
