//! Fixtures shared by the library's unit tests.

use circ_hv::fake::{FakeHypervisor, FakeXenStore};
use circ_hv::{DomId, DomainType, Transaction, XenStore as _};

use crate::enomem::DOM0_TARGET;

/// A fake host with two PVH guests, `ms-a` (1) and `ms-b` (2), of `pages`
/// pages each, both opted in to sharing, and dom0's balloon target at
/// `dom0_target_kib`.
pub(crate) fn two_opted_in_guests(
    pages: u64,
    dom0_target_kib: u64,
) -> (FakeHypervisor, FakeXenStore) {
    let hv = FakeHypervisor::new();
    let xs = FakeXenStore::new();
    for (dom, name) in [(1u16, "ms-a"), (2, "ms-b")] {
        hv.add_domain(DomId(dom), DomainType::Pvh, pages);
        let _ = xs.write(
            Transaction::NONE,
            &format!("/local/domain/{dom}/name"),
            name.as_bytes(),
        );
        let _ = xs.write(
            Transaction::NONE,
            &crate::policy::policy_key(DomId(dom)),
            name.as_bytes(),
        );
    }
    let _ = xs.write(
        Transaction::NONE,
        DOM0_TARGET,
        dom0_target_kib.to_string().as_bytes(),
    );
    (hv, xs)
}
