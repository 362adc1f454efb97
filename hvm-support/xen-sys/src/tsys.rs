// Written by hand, not by regenerate.sh: Circular's own domctl,
// XEN_DOMCTL_circ_tsys, added to the hypervisor by
// xen-patches/0002-x86-pv-trusted-system-calls-through-int-0x81.patch (and
// extended by 0003 and 0004), is not
// in Debian's libxen-dev headers. Keep these in step with that patch's
// xen/include/public/domctl.h.
//
// It is issued with libxenctrl's exported `xc_domctl()`, which fills in
// XEN_DOMCTL_INTERFACE_VERSION and bounces the struct (this domctl holds no
// guest handles).

/// `XEN_DOMCTL_circ_tsys`.
pub const XEN_DOMCTL_circ_tsys: u32 = 900;
pub const XEN_DOMCTL_TSYS_OP_authorise: u32 = 0;
pub const XEN_DOMCTL_TSYS_OP_revoke: u32 = 1;
pub const XEN_DOMCTL_TSYS_OP_info: u32 = 2;
/// xen-patches/0004: attaches a key (in `token`) to the armed registration.
pub const XEN_DOMCTL_TSYS_OP_key: u32 = 3;
pub const XEN_DOMCTL_TSYS_TOKEN_SIZE: usize = 32;
pub const XEN_DOMCTL_TSYS_F_authorised: u32 = 1 << 0;
pub const XEN_DOMCTL_TSYS_F_token_armed: u32 = 1 << 1;
pub const XEN_DOMCTL_TSYS_F_proc: u32 = 1 << 2;
pub const XEN_DOMCTL_TSYS_F_keyed: u32 = 1 << 3;
pub const XEN_DOMCTL_TSYS_F_key_armed: u32 = 1 << 4;

/// `struct xen_domctl_circ_tsys`.
#[repr(C)]
#[derive(Debug, Default, Copy, Clone)]
pub struct xen_domctl_circ_tsys {
    pub op: u32,
    pub index: u32,
    pub flags: u32,
    pub nr_procs: u32,
    pub token: [u8; XEN_DOMCTL_TSYS_TOKEN_SIZE],
    pub l4_mfn: u64,
    pub calls: u64,
    pub restores: u64,
    pub deferred: u64,
    pub pending: u32,
    pub cloak_pages: u32,
    pub refused: u64,
    pub bounces: u64,
    pub dropped: u64,
    pub cloak_held: u32,
    pub cloak_exposed: u32,
    // xen-patches/0004: sealed I/O.
    pub sealed_blocks: u32,
    pub sealed_fds: u16,
    pub seal_refused: u16,
}

/// `struct xen_domctl` with its union as the 128 bytes of its largest
/// member (`pad[128]`, 8-byte aligned): the generic form `xc_domctl` takes.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct xen_domctl {
    pub cmd: u32,
    pub interface_version: u32,
    pub domain: domid_t,
    pub _pad: [u16; 3],
    pub u: [u64; 16],
}

const _: () = {
    assert!(core::mem::size_of::<xen_domctl_circ_tsys>() == 128);
    assert!(core::mem::size_of::<xen_domctl_circ_tsys>() <= 128);
    assert!(core::mem::size_of::<xen_domctl>() == 144);
};

extern "C" {
    /// libxenctrl's generic domctl (declared in xenctrl.h, exported as
    /// `xc_domctl@@VERS_4.17.0`). Returns 0, or -1 with errno set.
    pub fn xc_domctl(xch: *mut xc_interface, domctl: *mut xen_domctl) -> ::core::ffi::c_int;
}
