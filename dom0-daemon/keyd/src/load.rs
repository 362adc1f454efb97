//! Loading k1 into Xen: unseal on the sealed PCRs, then arm one keyed
//! registration for the domain (`tsys_authorise_keyed`). k1 lives in dom0
//! from the unseal to the return of the hypercall.

use circ_hv::tsys::authorise_keyed;
use circ_hv::{DomId, Hypervisor, TsysToken, XenStore};
use circ_tpm::Tpm;

use crate::package::Package;
use crate::KeydError;

/// Unseals `pkg`'s k1 (it must be rolled out: `[sealed]`) and arms a
/// keyed token for `dom`, written to the guest's xenstore when `hand_over`.
pub fn load<T, H, X>(
    tpm: &mut T,
    hv: &H,
    xs: &X,
    pkg: &Package,
    dom: DomId,
    hand_over: bool,
) -> Result<TsysToken, KeydError>
where
    T: Tpm,
    H: Hypervisor + ?Sized,
    X: XenStore + ?Sized,
{
    let m = &pkg.manifest;
    if m.sealed.is_none() {
        return Err(KeydError::KeyForm("sealed (roll it out first)"));
    }
    let key = m.key(tpm, None)?;
    let token = authorise_keyed(hv, xs, dom, &key, hand_over)?;
    tracing::info!(app = %m.name, domid = %dom, hand_over, "k1 loaded into Xen for one registration");
    Ok(token)
}
