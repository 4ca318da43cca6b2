//! BlueFS on file-backed devices: full → NoSpace → the device file grows → `expand` → writable,
//! and the new size survives a remount.

mod common;

use bluepoll::bluefs::{BlueFs, BlueFsConfig, Devices};
use bluepoll::nvme::Device;
use common::{scratch_dir, sparse_image};

#[test]
fn a_full_filesystem_becomes_writable_after_the_device_grows_and_expand() {
    let dir = scratch_dir();
    let image = sparse_image(dir.path(), "db.img", 24 << 20);
    let uri = format!("uring:{}", image.display());
    let config = BlueFsConfig {
        log_reserve: 1 << 20,
        log_grow: 256 << 10,
        ..BlueFsConfig::default()
    };
    let devices = Devices::only(Device::open(&uri).unwrap());
    BlueFs::mkfs(&devices, &config, false).unwrap();
    let fs = BlueFs::mount(devices, config.clone(), None).unwrap().fs;
    fs.mkdir("db").unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut files = 0;
    let error = loop {
        let mut w = fs.create(&format!("db/f{files}")).unwrap();
        let result = w.append(&chunk).and_then(|()| w.fsync());
        drop(w);
        match result {
            Ok(()) => files += 1,
            Err(e) => break e,
        }
    };
    assert!(error.is_no_space(), "{error}");
    drop(fs);

    // The device grows; the filesystem keeps to its recorded size until told.
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let devices = Devices::only(Device::open(&uri).unwrap());
    let fs = BlueFs::mount(devices, config.clone(), None).unwrap().fs;
    let mut w = fs.create("db/after").unwrap();
    let result = w.append(&chunk).and_then(|()| w.fsync());
    drop(w);
    assert!(result.unwrap_err().is_no_space());
    let grown = fs.expand().unwrap();
    assert_eq!(grown.len(), 1, "{grown:?}");
    assert_eq!((grown[0].1, grown[0].2), (24 << 20, 48 << 20));
    let mut w = fs.create("db/after").unwrap();
    w.append(&chunk).unwrap();
    w.close().unwrap();
    drop(fs);

    let devices = Devices::only(Device::open(&uri).unwrap());
    let fs = BlueFs::mount(devices, config, None).unwrap().fs;
    assert_eq!(fs.read_file("db/after").unwrap(), chunk);
    assert_eq!(fs.usage().devices[1].as_ref().unwrap().size, 48 << 20);
    assert!(fs.expand().unwrap().is_empty());
    assert!(fs.fsck().errors.is_empty());
}
