//! `key=value` option lists, as device URIs, their wrappers and SPDK transport IDs write them:
//! `mem:1G?block_size=4096&class=ssd` (a query), `fault:seed=7,cache=on+mem:1G` (a list),
//! `trtype=PCIe traddr=0000:04:00.0 ns=1` (words).
//!
//! Whatever the separator, the rules are the same: every key at most once, values taken by name
//! as their reader understands them, and anything left untaken at the end is an error naming it,
//! so a misspelt option is never silently ignored.

use std::fmt;

use crate::units::parse_size;

/// What is wrong with an option list. `noun` is what the list calls its items ("parameter",
/// "option"), so messages read the way the user wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionsError {
    /// An item has no `=` where the syntax needs one.
    NotKeyValue {
        /// What the list calls its items.
        noun: &'static str,
        /// The item as written.
        item: String,
    },
    /// A key appears twice.
    Duplicate {
        /// What the list calls its items.
        noun: &'static str,
        /// The key.
        key: String,
    },
    /// A value its reader does not accept.
    Invalid {
        /// What the list calls its items.
        noun: &'static str,
        /// The key.
        key: String,
        /// Why, in words.
        reason: String,
    },
    /// A key nobody took.
    Unknown {
        /// What the list calls its items.
        noun: &'static str,
        /// The key.
        key: String,
    },
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::NotKeyValue { noun, item } => {
                write!(f, "{noun} '{item}' is not key=value")
            }
            OptionsError::Duplicate { noun, key } => write!(f, "{noun} '{key}' given twice"),
            OptionsError::Invalid { noun, key, reason } => write!(f, "{noun} '{key}': {reason}"),
            OptionsError::Unknown { noun, key } => write!(f, "unknown {noun} '{key}'"),
        }
    }
}

impl std::error::Error for OptionsError {}

/// The items of one option list, in the order written, taken by key as they are read.
#[derive(Clone, Debug)]
pub struct KeyValues<'a> {
    noun: &'static str,
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> KeyValues<'a> {
    /// A URI query, `key=value&key=value`: empty items are skipped and a bare `key` means
    /// `key=1` (a switch).
    pub fn query(text: &'a str, noun: &'static str) -> Result<KeyValues<'a>, OptionsError> {
        let items = text.split('&').filter(|item| !item.is_empty());
        KeyValues::from_items(items, noun, Some("1"))
    }

    /// A list separated by `separator` in which every item, even an empty one, is `key=value`.
    pub fn list(
        text: &'a str,
        separator: char,
        noun: &'static str,
    ) -> Result<KeyValues<'a>, OptionsError> {
        KeyValues::from_items(text.split(separator), noun, None)
    }

    /// Whitespace-separated `key=value` words (an SPDK transport ID).
    pub fn words(text: &'a str, noun: &'static str) -> Result<KeyValues<'a>, OptionsError> {
        KeyValues::from_items(text.split_whitespace(), noun, None)
    }

    fn from_items(
        items: impl Iterator<Item = &'a str>,
        noun: &'static str,
        bare: Option<&'static str>,
    ) -> Result<KeyValues<'a>, OptionsError> {
        let mut pairs: Vec<(&'a str, &'a str)> = Vec::new();
        for item in items {
            let (key, value) = match (item.split_once('='), bare) {
                (Some(pair), _) => pair,
                (None, Some(value)) => (item, value),
                (None, None) => {
                    return Err(OptionsError::NotKeyValue {
                        noun,
                        item: item.into(),
                    });
                }
            };
            if pairs.iter().any(|(k, _)| *k == key) {
                return Err(OptionsError::Duplicate {
                    noun,
                    key: key.into(),
                });
            }
            pairs.push((key, value));
        }
        Ok(KeyValues { noun, pairs })
    }

    /// The items not taken yet, in the order written.
    pub fn pairs(&self) -> &[(&'a str, &'a str)] {
        &self.pairs
    }

    /// Whether every item has been taken.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Removes `key` and returns its value, if given.
    pub fn take(&mut self, key: &str) -> Option<&'a str> {
        let index = self.pairs.iter().position(|(k, _)| *k == key)?;
        Some(self.pairs.remove(index).1)
    }

    /// Removes `key` and reads its value with `parse`, whose error becomes
    /// [`OptionsError::Invalid`]. `Ok(None)` when absent.
    pub fn take_with<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, OptionsError> {
        let noun = self.noun;
        self.take(key)
            .map(|value| {
                parse(value).map_err(|reason| OptionsError::Invalid {
                    noun,
                    key: key.into(),
                    reason,
                })
            })
            .transpose()
    }

    /// Removes `key` and reads it as a byte count (`4k`, `1G`; [`parse_size`]).
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>, OptionsError> {
        self.take_with(key, parse_size)
    }

    /// Removes `key` and reads it as a switch: `1`, `true`, `on`, `yes` are true; `0`, `false`,
    /// `off`, `no` false.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, OptionsError> {
        self.take_with(key, parse_switch)
    }

    /// An error for `key`'s value, worded like the others of this list.
    pub fn invalid(&self, key: &str, reason: impl Into<String>) -> OptionsError {
        OptionsError::Invalid {
            noun: self.noun,
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Fails on the first item nobody took.
    pub fn finish(self) -> Result<(), OptionsError> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(OptionsError::Unknown {
                noun: self.noun,
                key: (*key).into(),
            }),
        }
    }
}

/// A switch's value: `1`, `true`, `on`, `yes` or `0`, `false`, `off`, `no`.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => Err(format!("'{value}' is not on/off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_takes_values_by_name_and_names_what_is_left() {
        let mut q = KeyValues::query("size=4k&direct&&class=ssd", "parameter").unwrap();
        assert_eq!(q.take_size("size").unwrap(), Some(4096));
        assert_eq!(q.take_bool("direct").unwrap(), Some(true));
        assert_eq!(q.take_size("missing").unwrap(), None);
        assert_eq!(
            q.clone().finish().unwrap_err().to_string(),
            "unknown parameter 'class'"
        );
        assert_eq!(q.take("class"), Some("ssd"));
        q.finish().unwrap();
    }

    #[test]
    fn every_syntax_refuses_duplicates_and_bad_values() {
        assert_eq!(
            KeyValues::list("seed=1,seed=2", ',', "option")
                .unwrap_err()
                .to_string(),
            "option 'seed' given twice"
        );
        assert_eq!(
            KeyValues::list("seed=1,", ',', "option")
                .unwrap_err()
                .to_string(),
            "option '' is not key=value"
        );
        let mut w = KeyValues::words("trtype=PCIe  traddr=0000:04:00.0", "key").unwrap();
        assert_eq!(w.pairs().len(), 2);
        assert_eq!(w.take("traddr"), Some("0000:04:00.0"));
        let mut q = KeyValues::query("cache=maybe", "option").unwrap();
        assert_eq!(
            q.take_bool("cache").unwrap_err().to_string(),
            "option 'cache': 'maybe' is not on/off"
        );
    }
}
