//! Device URIs: `scheme:body[?key=value&key=value]`.
//!
//! Leaf backends (`mem:1G`, `null:1T`, `uring:/path?size=10G`) take a query string; wrappers
//! (`fault:[OPTIONS+]INNER`, `sim:CLASS[,OPTIONS]+INNER`) take their options before a `+` and
//! parse the inner URI themselves, so the inner URI may carry its own query.

use super::device::DeviceClass;
use super::error::NvmeError;
use bluepoll_base::options::{KeyValues, OptionsError};
use bluepoll_base::units::parse_size;

/// The schemes [`super::Device::open`] understands, for error messages.
pub const SCHEMES: &str = "mem, null, uring, pcie, spdk, fault, sim";

/// Splits `scheme:rest`. The scheme must be lowercase letters only, so a path is never mistaken
/// for one.
pub fn split_scheme(uri: &str) -> Result<(&str, &str), NvmeError> {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return Err(NvmeError::uri(
            uri,
            format!("no scheme; write it as SCHEME:ARGS, e.g. mem:1G (schemes: {SCHEMES})"),
        ));
    };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(NvmeError::uri(
            uri,
            format!("'{scheme}' is not a scheme (schemes: {SCHEMES})"),
        ));
    }
    Ok((scheme, rest))
}

/// A leaf URI's body and its query parameters, consumed as the backend reads them; whatever is
/// left at the end is an unknown parameter and an error. The parsing is
/// [`bluepoll_base::options::KeyValues`], shared with the wrappers' option lists.
pub struct Params<'a> {
    uri: &'a str,
    values: KeyValues<'a>,
}

impl<'a> Params<'a> {
    /// Splits `body?query` and returns the body with the parameters.
    pub fn parse(uri: &'a str, rest: &'a str) -> Result<(&'a str, Params<'a>), NvmeError> {
        let (body, query) = match rest.split_once('?') {
            Some((body, query)) => (body, query),
            None => (rest, ""),
        };
        let values = KeyValues::query(query, "parameter").map_err(|e| uri_error(uri, e))?;
        Ok((body, Params { uri, values }))
    }

    /// The whole URI the parameters came from, for error messages.
    pub fn uri(&self) -> &'a str {
        self.uri
    }

    /// Removes `key` and returns its raw value; `None` when the URI does not give it. A key
    /// written without `=value` reads as `"1"`.
    pub fn take_str(&mut self, key: &str) -> Option<&'a str> {
        self.values.take(key)
    }

    /// Removes `key` and parses its value as a size in bytes, written as fio writes sizes
    /// (`4096`, `4k`, `10G`, `0x1000`; the suffixes are powers of 1024). `Ok(None)` when absent;
    /// [`NvmeError::InvalidUri`] when the value is not a size.
    pub fn take_size(&mut self, key: &str) -> Result<Option<u64>, NvmeError> {
        self.values
            .take_size(key)
            .map_err(|e| uri_error(self.uri, e))
    }

    /// Removes `key` and parses it as a switch: `1`, `true`, `on`, `yes` or a bare key are
    /// true; `0`, `false`, `off`, `no` false. `Ok(None)` when absent; [`NvmeError::InvalidUri`]
    /// for any other value.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, NvmeError> {
        self.values
            .take_bool(key)
            .map_err(|e| uri_error(self.uri, e))
    }

    /// `block_size=N`: a power of two from 512 to 64 KiB, as NVMe LBA formats allow.
    pub fn take_block_size(&mut self, default: u32) -> Result<u32, NvmeError> {
        match self.take_size("block_size")? {
            None => Ok(default),
            Some(bs) if bs.is_power_of_two() && (512..=65536).contains(&bs) => Ok(bs as u32),
            Some(bs) => Err(NvmeError::uri(
                self.uri,
                format!("block_size {bs} must be a power of two from 512 to 65536"),
            )),
        }
    }

    /// `class=nvme|ssd|hdd`: overrides what the backend would report.
    pub fn take_class(&mut self) -> Result<Option<DeviceClass>, NvmeError> {
        self.take_str("class")
            .map(|v| {
                DeviceClass::parse(v).ok_or_else(|| {
                    NvmeError::uri(
                        self.uri,
                        format!("class '{v}' is not one of nvme, ssd, hdd"),
                    )
                })
            })
            .transpose()
    }

    /// Fails on any parameter the backend did not read.
    pub fn finish(self) -> Result<(), NvmeError> {
        self.values.finish().map_err(|e| uri_error(self.uri, e))
    }
}

/// An option list's error as the URI's.
pub fn uri_error(uri: &str, error: OptionsError) -> NvmeError {
    NvmeError::uri(uri, error.to_string())
}

/// Parses a namespace size written in the URI body (`mem:256M`), which must be a whole, non-zero
/// number of blocks.
pub fn parse_capacity(uri: &str, text: &str, block_size: u32) -> Result<u64, NvmeError> {
    if text.is_empty() {
        return Err(NvmeError::uri(uri, "missing size, e.g. mem:256M"));
    }
    let bytes = parse_size(text).map_err(|e| NvmeError::uri(uri, e))?;
    if bytes == 0 || bytes % block_size as u64 != 0 {
        return Err(NvmeError::uri(
            uri,
            format!("size {bytes} is not a non-zero multiple of the block size {block_size}"),
        ));
    }
    Ok(bytes / block_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_split() {
        assert_eq!(split_scheme("mem:1G").unwrap(), ("mem", "1G"));
        assert_eq!(
            split_scheme("fault:seed=1+mem:1G").unwrap(),
            ("fault", "seed=1+mem:1G")
        );
        assert!(split_scheme("/dev/nvme0n1").is_err());
        assert!(split_scheme("C:/x").is_err());
    }

    #[test]
    fn params_are_typed_and_unknown_ones_rejected() {
        let uri = "uring:/tmp/x?size=1G&sqpoll&block_size=512";
        let (_, rest) = split_scheme(uri).unwrap();
        let (body, mut p) = Params::parse(uri, rest).unwrap();
        assert_eq!(body, "/tmp/x");
        assert_eq!(p.take_size("size").unwrap(), Some(1 << 30));
        assert_eq!(p.take_bool("sqpoll").unwrap(), Some(true));
        assert_eq!(p.take_block_size(4096).unwrap(), 512);
        p.finish().unwrap();

        let uri = "mem:1G?colour=red";
        let (body, p) = Params::parse(uri, "1G?colour=red").unwrap();
        assert_eq!(body, "1G");
        assert!(
            p.finish()
                .unwrap_err()
                .to_string()
                .contains("unknown parameter 'colour'")
        );
    }

    #[test]
    fn capacity_must_be_whole_blocks() {
        assert_eq!(parse_capacity("mem:1M", "1M", 4096).unwrap(), 256);
        assert!(parse_capacity("mem:1000", "1000", 4096).is_err());
        assert!(parse_capacity("mem:", "", 4096).is_err());
        assert!(parse_capacity("mem:0", "0", 4096).is_err());
    }
}
