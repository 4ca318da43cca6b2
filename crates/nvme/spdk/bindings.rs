// Bindings to the part of SPDK's public API that crates/nvme/src/spdk.rs uses (see spdk/README.md).
//
// build.rs regenerates this file with bindgen from spdk/wrapper.h when the `spdk` feature is on
// and SPDK is installed, and fails if the result differs from this file (BLUEPOLL_SPDK_BLESS=1
// writes the regenerated bindings here instead). SPDK could not be installed where this file was
// first written, so it was written by hand from the SPDK headers named in spdk/README.md, in
// bindgen's shape: the handle and option types the backend only passes by pointer are opaque,
// the types it reads or fills are laid out in full, with layout checks below.

pub const SPDK_NVMF_TRSTRING_MAX_LEN: u32 = 32;
pub const SPDK_NVMF_TRADDR_MAX_LEN: u32 = 256;
pub const SPDK_NVMF_TRSVCID_MAX_LEN: u32 = 32;
pub const SPDK_NVMF_NQN_MAX_LEN: u32 = 223;
pub const SPDK_NVME_DSM_ATTR_DEALLOCATE: spdk_nvme_dsm_attribute = 4;
pub type spdk_nvme_dsm_attribute = ::std::os::raw::c_uint;
pub const SPDK_NVME_NS_DEALLOCATE_SUPPORTED: spdk_nvme_ns_flags = 1;
pub const SPDK_NVME_NS_FLUSH_SUPPORTED: spdk_nvme_ns_flags = 2;
pub const SPDK_NVME_NS_WRITE_ZEROES_SUPPORTED: spdk_nvme_ns_flags = 8;
pub type spdk_nvme_ns_flags = ::std::os::raw::c_uint;

pub type spdk_nvme_transport_type = ::std::os::raw::c_uint;
pub type spdk_nvmf_adrfam = ::std::os::raw::c_uint;

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_pci_addr {
    pub domain: u32,
    pub bus: u8,
    pub dev: u8,
    pub func: u8,
}

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_env_opts {
    pub name: *const ::std::os::raw::c_char,
    pub core_mask: *const ::std::os::raw::c_char,
    pub lcore_map: *const ::std::os::raw::c_char,
    pub shm_id: ::std::os::raw::c_int,
    pub mem_channel: ::std::os::raw::c_int,
    pub main_core: ::std::os::raw::c_int,
    pub mem_size: ::std::os::raw::c_int,
    pub no_pci: bool,
    pub hugepage_single_segments: bool,
    pub unlink_hugepage: bool,
    pub no_huge: bool,
    pub reserved: u32,
    pub num_pci_addr: usize,
    pub hugedir: *const ::std::os::raw::c_char,
    pub pci_blocked: *mut spdk_pci_addr,
    pub pci_allowed: *mut spdk_pci_addr,
    pub iova_mode: *const ::std::os::raw::c_char,
    pub base_virtaddr: u64,
    pub env_context: *mut ::std::os::raw::c_void,
    pub vf_token: *const ::std::os::raw::c_char,
    pub opts_size: usize,
}

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_transport_id {
    pub trstring: [::std::os::raw::c_char; 33usize],
    pub trtype: spdk_nvme_transport_type,
    pub adrfam: spdk_nvmf_adrfam,
    pub traddr: [::std::os::raw::c_char; 257usize],
    pub trsvcid: [::std::os::raw::c_char; 33usize],
    pub subnqn: [::std::os::raw::c_char; 224usize],
    pub priority: ::std::os::raw::c_int,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub union spdk_nvme_cpl__bindgen_ty_1 {
    pub status_raw: u16,
}

#[repr(C)]
#[derive(Copy, Clone)]
pub struct spdk_nvme_cpl {
    pub cdw0: u32,
    pub cdw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    pub __bindgen_anon_1: spdk_nvme_cpl__bindgen_ty_1,
}

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_dsm_range {
    pub attributes: u32,
    pub length: u32,
    pub starting_lba: u64,
}

#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_ctrlr {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_ns {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_qpair {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_ctrlr_opts {
    _unused: [u8; 0],
}
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct spdk_nvme_io_qpair_opts {
    _unused: [u8; 0],
}

pub type spdk_nvme_cmd_cb = ::std::option::Option<
    unsafe extern "C" fn(ctx: *mut ::std::os::raw::c_void, cpl: *const spdk_nvme_cpl),
>;

unsafe extern "C" {
    pub fn spdk_env_opts_init(opts: *mut spdk_env_opts);
    pub fn spdk_env_init(opts: *const spdk_env_opts) -> ::std::os::raw::c_int;
    pub fn spdk_dma_zmalloc(size: usize, align: usize, unused: *mut u64) -> *mut ::std::os::raw::c_void;
    pub fn spdk_dma_free(buf: *mut ::std::os::raw::c_void);
    pub fn spdk_mem_register(vaddr: *mut ::std::os::raw::c_void, len: usize) -> ::std::os::raw::c_int;
    pub fn spdk_mem_unregister(vaddr: *mut ::std::os::raw::c_void, len: usize) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_transport_id_parse(
        trid: *mut spdk_nvme_transport_id,
        str_: *const ::std::os::raw::c_char,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_connect(
        trid: *const spdk_nvme_transport_id,
        opts: *const spdk_nvme_ctrlr_opts,
        opts_size: usize,
    ) -> *mut spdk_nvme_ctrlr;
    pub fn spdk_nvme_detach(ctrlr: *mut spdk_nvme_ctrlr) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ctrlr_process_admin_completions(ctrlr: *mut spdk_nvme_ctrlr) -> i32;
    pub fn spdk_nvme_ctrlr_get_ns(ctrlr: *mut spdk_nvme_ctrlr, ns_id: u32) -> *mut spdk_nvme_ns;
    pub fn spdk_nvme_ns_is_active(ns: *mut spdk_nvme_ns) -> bool;
    pub fn spdk_nvme_ns_get_sector_size(ns: *mut spdk_nvme_ns) -> u32;
    pub fn spdk_nvme_ns_get_num_sectors(ns: *mut spdk_nvme_ns) -> u64;
    pub fn spdk_nvme_ns_get_max_io_xfer_size(ns: *mut spdk_nvme_ns) -> u32;
    pub fn spdk_nvme_ns_get_flags(ns: *mut spdk_nvme_ns) -> u32;
    pub fn spdk_nvme_ctrlr_alloc_io_qpair(
        ctrlr: *mut spdk_nvme_ctrlr,
        opts: *const spdk_nvme_io_qpair_opts,
        opts_size: usize,
    ) -> *mut spdk_nvme_qpair;
    pub fn spdk_nvme_ctrlr_free_io_qpair(qpair: *mut spdk_nvme_qpair) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ns_cmd_read(
        ns: *mut spdk_nvme_ns,
        qpair: *mut spdk_nvme_qpair,
        payload: *mut ::std::os::raw::c_void,
        lba: u64,
        lba_count: u32,
        cb_fn: spdk_nvme_cmd_cb,
        cb_arg: *mut ::std::os::raw::c_void,
        io_flags: u32,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ns_cmd_write(
        ns: *mut spdk_nvme_ns,
        qpair: *mut spdk_nvme_qpair,
        payload: *mut ::std::os::raw::c_void,
        lba: u64,
        lba_count: u32,
        cb_fn: spdk_nvme_cmd_cb,
        cb_arg: *mut ::std::os::raw::c_void,
        io_flags: u32,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ns_cmd_flush(
        ns: *mut spdk_nvme_ns,
        qpair: *mut spdk_nvme_qpair,
        cb_fn: spdk_nvme_cmd_cb,
        cb_arg: *mut ::std::os::raw::c_void,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ns_cmd_write_zeroes(
        ns: *mut spdk_nvme_ns,
        qpair: *mut spdk_nvme_qpair,
        lba: u64,
        lba_count: u32,
        cb_fn: spdk_nvme_cmd_cb,
        cb_arg: *mut ::std::os::raw::c_void,
        io_flags: u32,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_ns_cmd_dataset_management(
        ns: *mut spdk_nvme_ns,
        qpair: *mut spdk_nvme_qpair,
        type_: u32,
        ranges: *const spdk_nvme_dsm_range,
        num_ranges: u16,
        cb_fn: spdk_nvme_cmd_cb,
        cb_arg: *mut ::std::os::raw::c_void,
    ) -> ::std::os::raw::c_int;
    pub fn spdk_nvme_qpair_process_completions(
        qpair: *mut spdk_nvme_qpair,
        max_completions: u32,
    ) -> i32;
}

// Layouts the hand-written types must have (the static asserts of SPDK's headers and the
// C layout rules); bindgen emits the same checks for what it generates.
const _: () = assert!(::std::mem::size_of::<spdk_env_opts>() == 120);
const _: () = assert!(::std::mem::offset_of!(spdk_env_opts, opts_size) == 112);
const _: () = assert!(::std::mem::size_of::<spdk_nvme_transport_id>() == 564);
const _: () = assert!(::std::mem::offset_of!(spdk_nvme_transport_id, traddr) == 44);
const _: () = assert!(::std::mem::size_of::<spdk_nvme_cpl>() == 16);
const _: () = assert!(::std::mem::size_of::<spdk_nvme_dsm_range>() == 16);
