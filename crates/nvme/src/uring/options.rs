//! The `uring:` URI: `PATH` and its query parameters, checked and parsed into [`UriOptions`].

use std::path::PathBuf;

use super::setup::TaskRunMode;
use crate::device::DeviceClass;
use crate::error::NvmeError;
use crate::uri::Params;

const DEFAULT_SQPOLL_IDLE_MS: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PollMode {
    Auto,
    On,
    Off,
}

/// The URI, parsed.
pub(super) struct UriOptions {
    pub(super) path: PathBuf,
    pub(super) size: Option<u64>,
    pub(super) block_size: Option<u32>,
    pub(super) direct: bool,
    pub(super) poll: PollMode,
    pub(super) sqpoll_idle_ms: Option<u32>,
    pub(super) class: Option<DeviceClass>,
    /// `taskrun=coop|ipi`; None leaves the choice to the caller of `open_with`.
    pub(super) taskrun: Option<TaskRunMode>,
    /// `flush=inline`: a Flush runs as fdatasync on the polling thread.
    pub(super) flush_inline: bool,
}

impl UriOptions {
    pub(super) fn parse(uri: &str, rest: &str) -> Result<UriOptions, NvmeError> {
        let (path, mut params) = Params::parse(uri, rest)?;
        if path.is_empty() {
            return Err(NvmeError::uri(
                uri,
                "missing path; write it as uring:/path/to/file-or-device[?size=10G]",
            ));
        }
        let size = params.take_size("size")?;
        if size == Some(0) {
            return Err(NvmeError::uri(
                uri,
                "size=0 leaves no room for a single block",
            ));
        }
        // 0 is not a valid block size, so it stands for "not given" here.
        let block_size = match params.take_block_size(0)? {
            0 => None,
            bs => Some(bs),
        };
        let direct = params.take_bool("direct")?.unwrap_or(true);
        let poll = match params.take_str("poll") {
            None | Some("auto") => PollMode::Auto,
            Some("on") => PollMode::On,
            Some("off") => PollMode::Off,
            Some(other) => {
                return Err(NvmeError::uri(
                    uri,
                    format!("poll: '{other}' is not one of auto, on, off"),
                ));
            }
        };
        let sqpoll = params.take_bool("sqpoll")?.unwrap_or(false);
        let idle_ms = params
            .take_str("sqpoll_idle_ms")
            .map(|v| {
                v.parse::<u32>().map_err(|_| {
                    NvmeError::uri(uri, format!("sqpoll_idle_ms: '{v}' is not a whole number"))
                })
            })
            .transpose()?;
        if idle_ms.is_some() && !sqpoll {
            return Err(NvmeError::uri(uri, "sqpoll_idle_ms needs sqpoll=1"));
        }
        let class = params.take_class()?;
        let taskrun = match params.take_str("taskrun") {
            None => None,
            Some("coop") => Some(TaskRunMode::Cooperative),
            Some("ipi") => Some(TaskRunMode::Interrupting),
            Some(other) => {
                return Err(NvmeError::uri(
                    uri,
                    format!("taskrun: '{other}' is not one of coop, ipi"),
                ));
            }
        };
        let flush_inline = match params.take_str("flush") {
            None | Some("async") => false,
            Some("inline") => true,
            Some(other) => {
                return Err(NvmeError::uri(
                    uri,
                    format!("flush: '{other}' is not one of async, inline"),
                ));
            }
        };
        params.finish()?;
        if poll == PollMode::On && !direct {
            return Err(NvmeError::uri(
                uri,
                "poll=on needs O_DIRECT, which direct=0 turns off",
            ));
        }
        Ok(UriOptions {
            path: PathBuf::from(path),
            size,
            block_size,
            direct,
            poll: if direct { poll } else { PollMode::Off },
            sqpoll_idle_ms: sqpoll.then(|| idle_ms.unwrap_or(DEFAULT_SQPOLL_IDLE_MS)),
            class,
            taskrun,
            flush_inline,
        })
    }
}
