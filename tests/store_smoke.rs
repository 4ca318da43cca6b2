use bluepoll::store::{Store, StoreConfig, Transaction};

fn config() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.devices.slow = "mem:1G".into();
    c.pin = false;
    c
}

#[test]
fn smoke() {
    let c = config();
    let devices = bluepoll::store::StoreDevices::open(&c.devices).unwrap();
    Store::mkfs_on(&devices, &c).unwrap();
    let store = Store::mount_on(devices.clone(), c.clone()).unwrap();
    let mut t = Transaction::new("pool");
    t.create_collection().write("obj", 0, b"hello".to_vec());
    store.apply(t).unwrap();
    assert_eq!(store.read("pool", "obj", 0, 5).unwrap(), b"hello");
    let mut t = Transaction::new("pool");
    t.write("obj", 3, vec![7u8; 10000])
        .setattr("obj", "a", b"x".to_vec())
        .omap_setkey("obj", b"k", b"v");
    store.apply(t).unwrap();
    let d = store.read("pool", "obj", 0, 20000).unwrap();
    assert_eq!(d.len(), 10003);
    assert_eq!(&d[..3], b"hel");
    assert!(d[3..].iter().all(|b| *b == 7));
    assert_eq!(store.list_objects("pool", None, 10).unwrap(), vec!["obj"]);
    store.umount().unwrap();
    let store = Store::mount_on(devices.clone(), c.clone()).unwrap();
    let d = store.read("pool", "obj", 0, 20000).unwrap();
    assert_eq!(d.len(), 10003);
    assert!(d[3..].iter().all(|b| *b == 7));
    assert_eq!(store.getattr("pool", "obj", "a").unwrap(), b"x");
    assert_eq!(store.omap_get("pool", "obj").unwrap().len(), 1);
    println!(
        "{}",
        serde_json::to_string_pretty(&store.perf_dump().unwrap()).unwrap()
    );
    store.umount().unwrap();
    let r = bluepoll::store::fsck(&devices, &c, true, false).unwrap();
    assert!(r.is_clean(), "{:?}", r.errors);
}
