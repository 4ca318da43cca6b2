//! How a store is laid out and tuned: [`StoreConfig`], read from a TOML file or built in code.
//!
//! ```toml
//! [devices]
//! slow = "uring:/var/lib/bluepoll/main.img?size=64G"   # object data (required)
//! db = "uring:/var/lib/bluepoll/db.img?size=4G"        # RocksDB tables (optional)
//! wal = "uring:/var/lib/bluepoll/wal.img?size=1G"      # RocksDB's WAL, BlueFS's log (optional)
//!
//! [store]
//! cpus = [0, 1]                 # one reactor, and one shard, per CPU
//! min_alloc_size = "4K"
//! prefer_deferred_size = "64K"  # default: 64K when the data device is an HDD, else 0
//! cache_bytes = "256M"          # per shard: onodes and data
//! ```
//!
//! Without a `db` device, BlueFS's DB area is carved from the start of the main device
//! (`db_size`), as BlueStore does with a single device; its files may still grow into the main
//! device's free space through the shared allocator.

use std::time::Duration;

use super::error::{Result, StoreError};
use bluepoll_base::units::parse_size;
use bluepoll_bluefs::BlueFsConfig;
use bluepoll_kv::KvConfig;
use bluepoll_nvme::DeviceClass;

/// The device URIs a store is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceUris {
    /// The main device (`[devices] slow`), as [`Device::open`](bluepoll_nvme::Device::open)
    /// takes it: object data, BlueFS's spillover, and BlueFS's DB area when `db` is None.
    /// Required (empty: none given).
    pub slow: String,
    /// A device of its own for RocksDB's tables (BlueFS's DB device); None: a DB area of
    /// `db_size` bytes at the start of the main device. Must be given at every mount of a
    /// store made with one, and never for one made without.
    pub db: Option<String>,
    /// A device of its own for RocksDB's WAL and BlueFS's log; None: they live with the
    /// tables.
    pub wal: Option<String>,
}

/// Every knob of a store. [`Default`] suits a RAM-backed store on the current CPU.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Devices by URI, for [`super::Store::mkfs`] / [`super::Store::mount`] from a config file;
    /// the `*_on` forms take opened devices instead.
    pub devices: DeviceUris,
    /// One reactor and one shard per CPU.
    pub cpus: Vec<usize>,
    /// Pin reactors to their CPUs (tests on shared machines turn it off).
    pub pin: bool,
    /// Allocation unit on the main device (fixed at mkfs).
    pub min_alloc_size: u64,
    /// Bytes per data checksum (fixed at mkfs; divides `min_alloc_size`).
    pub csum_block: u64,
    /// Object bytes one extent-map shard covers (fixed at mkfs).
    pub extent_shard_span: u64,
    /// Overwrites of allocated space shorter than this go through the kv as deferred writes and
    /// are applied in place later. None: 64 KiB on an HDD, 0 (never) otherwise.
    pub prefer_deferred_size: Option<u64>,
    /// Deferred writes are applied once this many have queued on a shard...
    pub deferred_batch_ops: usize,
    /// ...or the oldest has waited this long.
    pub deferred_max_age: Duration,
    /// Cost of transactions in flight (bytes + ios × cost_per_io) before submitters wait.
    pub throttle_bytes: u64,
    /// None: 670000 on an HDD, 4000 otherwise (BlueStore's figures).
    pub throttle_cost_per_io: Option<u64>,
    /// Bytes of deferred writes not yet applied before submitters wait.
    pub throttle_deferred_bytes: u64,
    /// Memory for each shard's caches (onodes and data).
    pub cache_bytes: u64,
    /// Without a DB device: bytes of the main device BlueFS gets as its DB area (None: 1/16 of
    /// the device, between 64 MiB and 16 GiB).
    pub db_size: Option<u64>,
    /// Main-device bytes the store leaves free for BlueFS to grow into (None: 1/32 of the
    /// device, between 16 MiB and 4 GiB). Object writes that would eat into it get NoSpace.
    pub bluefs_reserve: Option<u64>,
    /// Share of the main device in use past which the store warns (once per crossing).
    pub nearfull_ratio: f64,
    /// Share of the main device in use past which transactions that would use more space
    /// (allocate more than they free) get NoSpace; overwrites and deletes still go through.
    pub full_ratio: f64,
    /// Commands in flight per shard on the main device.
    pub queue_depth: u32,
    /// How long an idle reactor spins before yielding its CPU (then sleeping): lowest latency
    /// when each reactor has a CPU to itself; shorter when reactors share CPUs with the kv-sync
    /// and RocksDB threads.
    pub idle_spin: Duration,
    /// How BlueFS, the filesystem under RocksDB, is made and run (its allocation units, log
    /// and read cache); the TOML file sets only `bluefs_read_cache_bytes`.
    pub bluefs: BlueFsConfig,
    /// How RocksDB is opened; the TOML file sets only `kv_write_buffer_size`.
    pub kv: KvConfig,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        let cpu = bluepoll_reactor::available_cpus()
            .first()
            .copied()
            .unwrap_or(0);
        StoreConfig {
            devices: DeviceUris::default(),
            cpus: vec![cpu],
            pin: true,
            min_alloc_size: 4096,
            csum_block: 4096,
            extent_shard_span: 64 << 10,
            prefer_deferred_size: None,
            deferred_batch_ops: 32,
            deferred_max_age: Duration::from_millis(5),
            throttle_bytes: 64 << 20,
            throttle_cost_per_io: None,
            throttle_deferred_bytes: 128 << 20,
            cache_bytes: 256 << 20,
            db_size: None,
            bluefs_reserve: None,
            nearfull_ratio: 0.85,
            full_ratio: 0.95,
            queue_depth: 512,
            idle_spin: Duration::from_micros(200),
            bluefs: BlueFsConfig::default(),
            kv: KvConfig::default(),
        }
    }
}

fn invalid(reason: impl Into<String>) -> StoreError {
    StoreError::Config {
        reason: reason.into(),
    }
}

impl StoreConfig {
    /// The deferred threshold for a data device of `class`.
    pub fn deferred_size_for(&self, class: DeviceClass) -> u64 {
        self.prefer_deferred_size.unwrap_or(match class {
            DeviceClass::Hdd => 64 << 10,
            _ => 0,
        })
    }

    /// The throttle cost of one data I/O on a data device of `class`: `throttle_cost_per_io`,
    /// or 670000 on an HDD and 4000 otherwise (BlueStore's figures) when None.
    pub fn cost_per_io_for(&self, class: DeviceClass) -> u64 {
        self.throttle_cost_per_io.unwrap_or(match class {
            DeviceClass::Hdd => 670_000,
            _ => 4000,
        })
    }

    /// Bytes of the DB area mkfs carves from a main device of `device_bytes` when there is no
    /// DB device: `db_size`, or 1/16 of the device between 64 MiB and 16 GiB when None; rounded
    /// up to a MiB.
    pub fn db_size_for(&self, device_bytes: u64) -> u64 {
        self.db_size
            .unwrap_or_else(|| (device_bytes / 16).clamp(64 << 20, 16 << 30))
            .next_multiple_of(1 << 20)
    }

    /// Bytes of a main device of `device_bytes` kept free for BlueFS: `bluefs_reserve`, or 1/32
    /// of the device between 16 MiB and 4 GiB when None.
    pub fn bluefs_reserve_for(&self, device_bytes: u64) -> u64 {
        self.bluefs_reserve
            .unwrap_or_else(|| (device_bytes / 32).clamp(16 << 20, 4 << 30))
    }

    /// Checks the values that must hold together.
    pub fn validate(&self) -> Result<()> {
        let pow2 = |name: &str, v: u64, min: u64| {
            if v.is_power_of_two() && v >= min {
                Ok(())
            } else {
                Err(invalid(format!(
                    "{name} = {v} must be a power of two ≥ {min}"
                )))
            }
        };
        if !(self.nearfull_ratio > 0.0
            && self.nearfull_ratio <= self.full_ratio
            && self.full_ratio <= 1.0)
        {
            return Err(invalid(format!(
                "nearfull_ratio = {} and full_ratio = {} must satisfy 0 < nearfull_ratio ≤ full_ratio ≤ 1",
                self.nearfull_ratio, self.full_ratio
            )));
        }
        pow2("csum_block", self.csum_block, 4096)?;
        pow2("min_alloc_size", self.min_alloc_size, self.csum_block)?;
        pow2(
            "extent_shard_span",
            self.extent_shard_span,
            self.min_alloc_size,
        )?;
        if self.min_alloc_size > 16 << 20 || self.extent_shard_span > 1 << 30 {
            return Err(invalid(
                "min_alloc_size must be at most 16M and extent_shard_span at most 1G",
            ));
        }
        if self.cpus.is_empty() {
            return Err(invalid("cpus is empty: a store needs at least one reactor"));
        }
        if self.deferred_batch_ops == 0 {
            return Err(invalid("deferred_batch_ops must be at least 1"));
        }
        if self.queue_depth < 8 {
            return Err(invalid("queue_depth must be at least 8"));
        }
        if self.throttle_bytes < 1 << 20 {
            return Err(invalid("throttle_bytes must be at least 1M"));
        }
        Ok(())
    }

    /// Reads a TOML config file (see the module documentation).
    pub fn from_file(path: &std::path::Path) -> Result<StoreConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        StoreConfig::from_toml(&text)
            .map_err(|e| invalid(format!("{}: {}", path.display(), strip(e))))
    }

    /// Parses the TOML text of a config file. Unknown sections and keys are errors that name
    /// them.
    pub fn from_toml(text: &str) -> Result<StoreConfig> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(format!("not valid TOML: {}", e.message())))?;
        let mut config = StoreConfig::default();
        for (section, value) in &table {
            let toml::Value::Table(entries) = value else {
                return Err(invalid(format!(
                    "'{section}' must be a section ([devices] or [store])"
                )));
            };
            match section.as_str() {
                "devices" => config.read_devices(entries)?,
                "store" => config.read_store(entries)?,
                other => {
                    return Err(invalid(format!(
                        "unknown section [{other}] (sections: devices, store)"
                    )));
                }
            }
        }
        if config.devices.slow.is_empty() {
            return Err(invalid(
                "[devices] needs slow = \"URI\" (the main data device)",
            ));
        }
        config.validate()?;
        Ok(config)
    }

    fn read_devices(&mut self, entries: &toml::Table) -> Result<()> {
        for (key, value) in entries {
            let uri = value
                .as_str()
                .ok_or_else(|| invalid(format!("devices.{key} must be a string (a device URI)")))?
                .to_string();
            match key.as_str() {
                "slow" => self.devices.slow = uri,
                "db" => self.devices.db = Some(uri),
                "wal" => self.devices.wal = Some(uri),
                other => {
                    return Err(invalid(format!(
                        "unknown device role '{other}' (roles: slow, db, wal)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn read_store(&mut self, entries: &toml::Table) -> Result<()> {
        for (key, value) in entries {
            let k = key.as_str();
            let size = || size_value(k, value);
            match k {
                "cpus" => self.cpus = cpus_value(value)?,
                "pin" => self.pin = bool_value(k, value)?,
                "min_alloc_size" => self.min_alloc_size = size()?,
                "csum_block" => self.csum_block = size()?,
                "extent_shard_span" => self.extent_shard_span = size()?,
                "prefer_deferred_size" => self.prefer_deferred_size = Some(size()?),
                "deferred_batch_ops" => self.deferred_batch_ops = size()? as usize,
                "deferred_max_age_ms" => {
                    self.deferred_max_age = Duration::from_millis(size()?);
                }
                "throttle_bytes" => self.throttle_bytes = size()?,
                "throttle_cost_per_io" => self.throttle_cost_per_io = Some(size()?),
                "throttle_deferred_bytes" => self.throttle_deferred_bytes = size()?,
                "cache_bytes" => self.cache_bytes = size()?,
                "db_size" => self.db_size = Some(size()?),
                "bluefs_reserve" => self.bluefs_reserve = Some(size()?),
                "nearfull_ratio" => self.nearfull_ratio = ratio_value(k, value)?,
                "full_ratio" => self.full_ratio = ratio_value(k, value)?,
                "queue_depth" => {
                    self.queue_depth = u32::try_from(size()?)
                        .map_err(|_| invalid("store.queue_depth must fit in 32 bits"))?;
                }
                "idle_spin_us" => self.idle_spin = Duration::from_micros(size()?),
                "kv_write_buffer_size" => self.kv.write_buffer_size = size()? as usize,
                "bluefs_read_cache_bytes" => self.bluefs.read_cache_bytes = size()?,
                other => {
                    return Err(invalid(format!(
                        "unknown option store.{other} (see docs/store.md for the options)"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn strip(e: StoreError) -> String {
    match e {
        StoreError::Config { reason } => reason,
        other => other.to_string(),
    }
}

fn size_value(key: &str, value: &toml::Value) -> Result<u64> {
    match value {
        toml::Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        toml::Value::String(s) => {
            parse_size(s).map_err(|e| invalid(format!("store.{key} = \"{s}\": {e}")))
        }
        other => Err(invalid(format!(
            "store.{key} = {other:?}: expected a size (a number, or a string like \"4K\")"
        ))),
    }
}

fn bool_value(key: &str, value: &toml::Value) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| invalid(format!("store.{key} must be true or false")))
}

fn ratio_value(key: &str, value: &toml::Value) -> Result<f64> {
    let r = match value {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(n) => *n as f64,
        _ => {
            return Err(invalid(format!(
                "store.{key} must be a number between 0 and 1"
            )));
        }
    };
    if r.is_finite() && r > 0.0 && r <= 1.0 {
        Ok(r)
    } else {
        Err(invalid(format!("store.{key} = {r} must be in (0, 1]")))
    }
}

/// The CPUs of a `cpus` value: an array of CPU numbers (`[0, 1]`) or a string in the list
/// format of [`parse_cpu_list`] (`"0-3"`, `"0,2"`).
pub fn cpus_value(value: &toml::Value) -> Result<Vec<usize>> {
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|v| match v {
                toml::Value::Integer(n) if *n >= 0 => Ok(*n as usize),
                other => Err(invalid(format!(
                    "store.cpus: {other:?} is not a CPU number"
                ))),
            })
            .collect(),
        toml::Value::String(s) => parse_cpu_list(s),
        other => Err(invalid(format!(
            "store.cpus = {other:?}: expected a list like [0, 1] or a string like \"0-3\""
        ))),
    }
}

/// Most CPUs a list may name: more than any machine has, and a bound on what a few characters
/// (`0-99999999999`) can make the parser allocate.
const MAX_LISTED_CPUS: usize = 8192;

/// Parses a CPU list in Linux's format, numbers and inclusive ranges separated by commas:
/// `0,2-3` → [0, 2, 3]. An empty list, a backwards range, or more than 8192 CPUs is an error.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| invalid(format!("cpus: '{s}' is not a CPU number")))
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if a > b {
            return Err(invalid(format!("cpus: range '{part}' runs backwards")));
        }
        if b - a >= MAX_LISTED_CPUS - out.len() {
            return Err(invalid(format!(
                "cpus: more than {MAX_LISTED_CPUS} CPUs listed"
            )));
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(invalid("cpus: no CPU given"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_is_read_and_checked() {
        let c = StoreConfig::from_toml(
            r#"
            [devices]
            slow = "mem:1G"
            wal = "mem:64M"
            [store]
            cpus = "0-1"
            min_alloc_size = "8K"
            prefer_deferred_size = 32768
            pin = false
            "#,
        )
        .unwrap();
        assert_eq!(c.devices.slow, "mem:1G");
        assert_eq!(c.devices.wal.as_deref(), Some("mem:64M"));
        assert_eq!(c.cpus, vec![0, 1]);
        assert_eq!(
            (c.min_alloc_size, c.prefer_deferred_size),
            (8192, Some(32768))
        );
        assert!(!c.pin);

        let err = |text: &str| StoreConfig::from_toml(text).unwrap_err().to_string();
        assert!(
            err("[devices]\nslow='mem:1G'\n[store]\nmin_aloc_size=4096").contains("min_aloc_size")
        );
        assert!(err("[devices]\nslow='mem:1G'\nslo='x'").contains("'slo'"));
        assert!(err("[store]\ncpus=[0]").contains("slow"));
        assert!(
            err("[devices]\nslow='mem:1G'\n[store]\nmin_alloc_size='3K'").contains("power of two")
        );
        assert!(
            err("[devices]\nslow='mem:1G'\n[store]\ncache_bytes='lots'").contains("cache_bytes")
        );
        assert!(err("[devices\n").contains("TOML"));
    }

    #[test]
    fn defaults_follow_the_device_class() {
        let c = StoreConfig::default();
        assert_eq!(c.deferred_size_for(DeviceClass::Hdd), 64 << 10);
        assert_eq!(c.deferred_size_for(DeviceClass::Nvme), 0);
        assert_eq!(c.db_size_for(1 << 30), 64 << 20);
        assert_eq!(c.bluefs_reserve_for(1 << 40), 4 << 30);
        assert_eq!(parse_cpu_list("0, 2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
    }
}
