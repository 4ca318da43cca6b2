//! SPDK's fio plugins, read as bluepoll devices: job files written for `ioengine=spdk` (SPDK's
//! NVMe plugin: `filename` is a transport ID, `trtype=PCIe traddr=0000.04.00.0 ns=1`, with dots
//! where the PCI address has colons because fio splits filenames at colons) and for
//! `ioengine=spdk_bdev` (`filename` names a bdev that `spdk_json_conf` creates) run on the device
//! bluepoll drives the same way: the controller through `pcie:` (or `spdk:` when built with the
//! SPDK backend), a malloc bdev as `mem:`, a null bdev as `null:`. Anything else is named.

use bluepoll_base::options::KeyValues;
use serde_json::Value;

/// The bluepoll URI for an SPDK NVMe transport ID as SPDK's fio plugin takes it.
pub fn nvme_uri(transport_id: &str) -> Result<String, String> {
    let mut trtype = None;
    let mut traddr = None;
    let mut ns = None;
    let values = KeyValues::words(transport_id, "transport ID key")
        .map_err(|e| format!("{e} (in '{transport_id}')"))?;
    for &(key, value) in values.pairs() {
        match key.to_ascii_lowercase().as_str() {
            "trtype" => trtype = Some(value.to_string()),
            "traddr" => traddr = Some(value.to_string()),
            "ns" => ns = Some(value.to_string()),
            // Fabrics keys name transports bluepoll does not drive.
            _ => {}
        }
    }
    match trtype.as_deref() {
        Some(t) if t.eq_ignore_ascii_case("pcie") => {}
        Some(other) => {
            return Err(format!(
                "transport {other} is not supported: bluepoll drives local PCIe controllers only"
            ));
        }
        None => return Err(format!("'{transport_id}' has no trtype")),
    }
    let traddr = traddr.ok_or_else(|| format!("'{transport_id}' has no traddr"))?;
    let address = pci_address(&traddr)?;
    let nsid = ns.unwrap_or_else(|| "1".into());
    nsid.parse::<u32>()
        .map_err(|_| format!("ns={nsid} is not a namespace number"))?;
    Ok(if cfg!(feature = "spdk") {
        format!("spdk:trtype=PCIe traddr={address} ns={nsid}")
    } else {
        format!("pcie:{address}?nsid={nsid}")
    })
}

/// `0000.04.00.0` (fio's spelling) or `0000:04:00.0` as `0000:04:00.0`.
fn pci_address(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split(['.', ':']).collect();
    let [domain, bus, device, function] = parts.as_slice() else {
        return Err(format!("'{text}' is not a PCI address (DDDD.BB.DD.F)"));
    };
    let hex = |s: &str, width: usize| s.len() == width && s.chars().all(|c| c.is_ascii_hexdigit());
    if !(hex(domain, 4) && hex(bus, 2) && hex(device, 2) && hex(function, 1)) {
        return Err(format!("'{text}' is not a PCI address (DDDD.BB.DD.F)"));
    }
    Ok(format!("{domain}:{bus}:{device}.{function}"))
}

/// The bluepoll URI for bdev `name` of an SPDK JSON config (`spdk_json_conf`).
pub fn bdev_uri(config_text: &str, name: &str) -> Result<String, String> {
    let config: Value =
        serde_json::from_str(config_text).map_err(|e| format!("not SPDK JSON config: {e}"))?;
    let subsystems = config["subsystems"]
        .as_array()
        .ok_or("no \"subsystems\" list")?;
    let methods = subsystems
        .iter()
        .filter(|s| s["subsystem"] == "bdev")
        .filter_map(|s| s["config"].as_array())
        .flatten();
    for entry in methods {
        let method = entry["method"].as_str().unwrap_or("");
        let params = &entry["params"];
        let size = || -> Result<(u64, u64), String> {
            let blocks = params["num_blocks"].as_u64().ok_or("no num_blocks")?;
            let block_size = params["block_size"].as_u64().unwrap_or(512);
            Ok((blocks * block_size, block_size))
        };
        match method {
            "bdev_malloc_create" | "bdev_null_create" if params["name"] == name => {
                let (bytes, block_size) = size().map_err(|e| format!("{method} {name}: {e}"))?;
                let scheme = if method == "bdev_malloc_create" {
                    "mem"
                } else {
                    "null"
                };
                return Ok(format!("{scheme}:{bytes}?block_size={block_size}"));
            }
            "bdev_nvme_attach_controller" => {
                // Controller Nvme0 gives bdevs Nvme0n1, Nvme0n2, …
                let controller = params["name"].as_str().unwrap_or("");
                let Some(nsid) = name
                    .strip_prefix(controller)
                    .and_then(|rest| rest.strip_prefix('n'))
                    .filter(|_| !controller.is_empty())
                else {
                    continue;
                };
                let trtype = params["trtype"].as_str().unwrap_or("");
                let traddr = params["traddr"].as_str().unwrap_or("");
                return nvme_uri(&format!("trtype={trtype} traddr={traddr} ns={nsid}"));
            }
            _ if params["name"] == name => {
                return Err(format!(
                    "bdev {name} ({method}) has no bluepoll counterpart (malloc, null and NVMe \
                     bdevs do)"
                ));
            }
            _ => {}
        }
    }
    Err(format!("the config creates no bdev named {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ids_become_pcie_uris() {
        let uri = nvme_uri("trtype=PCIe traddr=0000.04.00.0 ns=1").unwrap();
        if cfg!(feature = "spdk") {
            assert_eq!(uri, "spdk:trtype=PCIe traddr=0000:04:00.0 ns=1");
        } else {
            assert_eq!(uri, "pcie:0000:04:00.0?nsid=1");
        }
        assert!(
            nvme_uri("trtype=RDMA traddr=10.0.0.1")
                .unwrap_err()
                .contains("RDMA")
        );
        assert!(nvme_uri("trtype=PCIe traddr=04.00").is_err());
        assert!(
            nvme_uri("traddr=0000.04.00.0")
                .unwrap_err()
                .contains("trtype")
        );
    }

    #[test]
    fn bdevs_map_to_devices_or_are_named() {
        let conf = r#"{"subsystems":[{"subsystem":"bdev","config":[
            {"method":"bdev_malloc_create","params":{"name":"Malloc0","num_blocks":131072,"block_size":512}},
            {"method":"bdev_null_create","params":{"name":"Null0","num_blocks":1024,"block_size":4096}},
            {"method":"bdev_nvme_attach_controller","params":{"name":"Nvme0","trtype":"PCIe","traddr":"0000:04:00.0"}},
            {"method":"bdev_aio_create","params":{"name":"Aio0","filename":"/dev/sdb"}}]}]}"#;
        assert_eq!(
            bdev_uri(conf, "Malloc0").unwrap(),
            "mem:67108864?block_size=512"
        );
        assert_eq!(
            bdev_uri(conf, "Null0").unwrap(),
            "null:4194304?block_size=4096"
        );
        assert!(bdev_uri(conf, "Nvme0n1").unwrap().contains("0000:04:00.0"));
        assert!(
            bdev_uri(conf, "Aio0")
                .unwrap_err()
                .contains("bdev_aio_create")
        );
        assert!(
            bdev_uri(conf, "Missing")
                .unwrap_err()
                .contains("no bdev named")
        );
        assert!(bdev_uri("{", "x").is_err());
    }
}
