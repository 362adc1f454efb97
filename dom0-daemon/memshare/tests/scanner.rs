//! The scanner over circ-hv's fakes: what gets shared, and above all what
//! must not be.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use circ_hv::fake::{FakeForeignMemory, FakeHypervisor, FakeXenStore};
use circ_hv::{
    DomId, DomainInfo, DomainType, ErrorKind, ForeignMapping, ForeignMemory, Gfn, GrantRef,
    HvError, Hypervisor, PhysInfo, Placement, Protection, SharePage, SharingHandle, Transaction,
    VcpuRegs, XenStore, XenVersion, PAGE_SIZE,
};
use circ_memshare::policy::{enable, policy_key};
use circ_memshare::throttle::{Limits, SystemClock};
use circ_memshare::{PageHasher, ScanConfig, SharingScanner, Xxh3Hasher};

const A: DomId = DomId(1);
const B: DomId = DomId(2);
const C: DomId = DomId(3);
const PV: DomId = DomId(4);
const OUT: DomId = DomId(5);

fn config(require_stable: bool) -> ScanConfig {
    ScanConfig {
        batch_pages: 7,
        share_chunk: 3,
        limits: Limits {
            pages_per_sec: 0,
            cpu_budget: 1.0,
        },
        require_stable,
    }
}

/// A page filled with `tag` repeated.
fn page(tag: &str) -> Vec<u8> {
    tag.bytes().cycle().take(PAGE_SIZE).collect()
}

/// Guests A, B, C (PVH, opted in), PV (with a hand-written key) and OUT
/// (PVH, not opted in). Every guest has gfns 0..4 = "common-N", 4..6 zero,
/// 6 = "own-<dom>", 7 = "pair" in A and B only.
fn host() -> (FakeHypervisor, FakeXenStore) {
    let hv = FakeHypervisor::new();
    let xs = FakeXenStore::new();
    for (dom, ty) in [
        (A, DomainType::Pvh),
        (B, DomainType::Pvh),
        (C, DomainType::Hvm),
        (PV, DomainType::Pv),
        (OUT, DomainType::Pvh),
    ] {
        hv.add_domain(dom, ty, 1024);
        let name = format!("guest-{dom}");
        xs.write(
            Transaction::NONE,
            &format!("/local/domain/{dom}/name"),
            name.as_bytes(),
        )
        .unwrap();
        for g in 0..4 {
            hv.set_page(dom, Gfn(g), &page(&format!("common-{g}")));
        }
        for g in 4..6 {
            hv.set_page(dom, Gfn(g), &[]);
        }
        hv.set_page(dom, Gfn(6), &page(&format!("own-{dom}")));
        if dom == A || dom == B {
            hv.set_page(dom, Gfn(7), &page("pair"));
        }
    }
    for dom in [A, B, C] {
        enable(&hv, &xs, &dom.to_string()).unwrap();
    }
    xs.write(Transaction::NONE, &policy_key(PV), b"guest-4")
        .unwrap();
    (hv, xs)
}

fn frames_of(hv: &FakeHypervisor, dom: DomId) -> Vec<Vec<u8>> {
    (0..8).filter_map(|g| hv.page(dom, Gfn(g))).collect()
}

#[test]
fn identical_pages_are_shared_after_a_stable_round() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(true));

    let first = scanner.round(&[]).unwrap();
    assert_eq!(
        first.domains,
        [1, 2, 3],
        "PV and not-opted-in are not scanned"
    );
    assert_eq!(first.pages_scanned, 8 + 8 + 7);
    assert_eq!(
        first.pages_shared, 0,
        "nothing is stable in the first round"
    );

    let second = scanner.round(&[]).unwrap();
    // 4 common pages: 2 clients each; zero pages: 6 of them, one source;
    // "pair": one client.
    assert_eq!(second.pages_shared, 4 * 2 + 5 + 1, "{second:?}");
    assert_eq!(second.zero_pages_shared, 5);
    assert_eq!(second.rejected_changed, 0);
    for g in 0..4 {
        assert!(hv.same_frame((A, Gfn(g)), (B, Gfn(g))));
        assert!(hv.same_frame((A, Gfn(g)), (C, Gfn(g))));
    }
    assert!(
        hv.same_frame((A, Gfn(4)), (C, Gfn(5))),
        "zero pages, across and within"
    );
    assert!(hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
    assert!(!hv.same_frame((A, Gfn(6)), (B, Gfn(6))));
    assert_eq!(hv.sharing_freed_pages().unwrap(), 14);
    // Contents are what each guest had.
    assert_eq!(hv.page(B, Gfn(6)).unwrap(), page("own-2"));
    assert_eq!(hv.page(C, Gfn(2)).unwrap(), page("common-2"));

    let stats = scanner.stats();
    let b = stats.iter().find(|s| s.domid == 2).unwrap();
    assert_eq!(b.pages_scanned, 8);
    assert!(b.pages_shared > 0 && b.shr_pages > 0);
}

#[test]
fn pv_dom0_and_not_opted_in_domains_are_never_touched() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let before: Vec<_> = [PV, OUT].iter().map(|d| frames_of(&hv, *d)).collect();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    scanner.round(&[]).unwrap();
    scanner.round(&[]).unwrap();
    for dom in [PV, OUT, DomId::DOM0] {
        assert_eq!(hv.domain(dom).unwrap().shr_pages, 0, "domain {dom}");
    }
    // Sharing was never turned on for them: nominate is refused.
    assert_eq!(
        hv.nominate_gfn(OUT, Gfn(0)).unwrap_err().kind(),
        ErrorKind::NotSupported
    );
    let after: Vec<_> = [PV, OUT].iter().map(|d| frames_of(&hv, *d)).collect();
    assert_eq!(before, after);
    // Even naming them explicitly does not scan them.
    let s = scanner.round(&[OUT, PV]).unwrap();
    assert!(s.domains.is_empty());
}

/// Every page hashes to the same value: grouping proposes everything with
/// everything, the compare must sort it out.
struct Colliding;
impl PageHasher for Colliding {
    fn hash(&self, _: &[u8; PAGE_SIZE]) -> u64 {
        42
    }
}

#[test]
fn hash_collisions_never_share_different_bytes() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::with_parts(
        &hv,
        &fm,
        &xs,
        config(false),
        Colliding,
        SystemClock::default(),
    );
    let s = scanner.round(&[]).unwrap();
    // One group of all non-zero pages. Its source is A's gfn 0
    // ("common-0"): only the two other "common-0" pages match it.
    assert!(s.rejected_changed > 0, "{s:?}");
    for dom in [A, B, C] {
        for g in 0..8 {
            let Some(bytes) = hv.page(dom, Gfn(g)) else {
                continue;
            };
            let shared_with_a0 = hv.same_frame((dom, Gfn(g)), (A, Gfn(0)));
            assert_eq!(
                shared_with_a0,
                bytes == page("common-0"),
                "domain {dom} gfn {g}"
            );
        }
    }
    // Every page still holds its own bytes.
    assert_eq!(hv.page(B, Gfn(1)).unwrap(), page("common-1"));
    assert_eq!(hv.page(C, Gfn(6)).unwrap(), page("own-3"));
    // A restarted daemon with the real hash cannot tell the pages the
    // colliding one left nominated from pages shared with others: it does
    // not take them as share clients (Xen could panic, see
    // `nominate_private`), but fresh pages still get shared.
    hv.set_page(B, Gfn(9), &page("late"));
    hv.set_page(C, Gfn(9), &page("late"));
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    let s = scanner.round(&[]).unwrap();
    assert!(!hv.same_frame((B, Gfn(1)), (C, Gfn(1))));
    assert!(hv.same_frame((B, Gfn(9)), (C, Gfn(9))), "{s:?}");
}

/// A hasher that, once armed, changes one guest page right after it hashed
/// a page with the given contents: the guest wrote it between our hash and
/// our nominate.
struct WriteAfterHash<'a> {
    hv: &'a FakeHypervisor,
    trigger: Vec<u8>,
    victim: (DomId, Gfn),
    armed: Cell<bool>,
    /// Occurrences of `trigger` to let pass first.
    skip: Cell<u32>,
}

impl PageHasher for WriteAfterHash<'_> {
    fn hash(&self, page: &[u8; PAGE_SIZE]) -> u64 {
        let h = Xxh3Hasher.hash(page);
        if self.armed.get() && page[..] == self.trigger[..] {
            if self.skip.get() > 0 {
                self.skip.set(self.skip.get() - 1);
                return h;
            }
            self.armed.set(false);
            self.hv
                .set_page(self.victim.0, self.victim.1, b"written by the guest");
        }
        h
    }
}

#[test]
fn page_written_between_hash_and_nominate_is_not_shared() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let hasher = WriteAfterHash {
        hv: &hv,
        trigger: page("pair"),
        victim: (B, Gfn(7)),
        armed: Cell::new(false),
        skip: Cell::new(1),
    };
    let mut scanner = SharingScanner::with_parts(
        &hv,
        &fm,
        &xs,
        config(false),
        &hasher,
        SystemClock::default(),
    );
    hasher.armed.set(true);
    // A's gfn 7 is hashed first; B's gfn 7 is hashed as "pair", then (in
    // the hasher) written: it must not be shared into A's.
    let s = scanner.round(&[]).unwrap();
    assert!(!hasher.armed.get(), "the write happened");
    assert!(!hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
    assert_eq!(&hv.page(B, Gfn(7)).unwrap()[..20], b"written by the guest");
    assert_eq!(hv.page(A, Gfn(7)).unwrap(), page("pair"));
    assert!(s.rejected_changed >= 1, "{s:?}");
    assert!(
        hv.same_frame((A, Gfn(0)), (B, Gfn(0))),
        "the rest is shared"
    );
}

impl PageHasher for &WriteAfterHash<'_> {
    fn hash(&self, page: &[u8; PAGE_SIZE]) -> u64 {
        (*self).hash(page)
    }
}

/// A hypervisor whose guests do something at the worst moment.
struct Racing<'a> {
    hv: &'a FakeHypervisor,
    /// Before `share` into this client page: the guest writes its client
    /// page (`true`) or the source page (`false`).
    write_on_share: RefCell<Option<((DomId, Gfn), bool)>>,
    /// On the first nominate of a page of this domain, it is destroyed.
    vanish_on_nominate: Cell<Option<DomId>>,
    /// Pages that took part in a share. Xen 4.17 panics (lock order) when a
    /// share's client is already shared with a domain other than the two
    /// in the call; this fake refuses any already-shared client.
    shared: RefCell<BTreeSet<(DomId, Gfn)>>,
}

impl<'a> Racing<'a> {
    fn new(hv: &'a FakeHypervisor) -> Self {
        Self {
            hv,
            write_on_share: RefCell::new(None),
            vanish_on_nominate: Cell::new(None),
            shared: RefCell::new(BTreeSet::new()),
        }
    }

    fn guest_write(&self, dom: DomId, gfn: Gfn) {
        let fm = self.hv.foreign_memory();
        let m = fm
            .map(dom, &[gfn], Protection::ReadWrite, Placement::Anywhere)
            .unwrap();
        m.write(0, 0, b"guest write").unwrap();
    }
}

impl Hypervisor for Racing<'_> {
    fn version(&self) -> Result<XenVersion, HvError> {
        self.hv.version()
    }
    fn physinfo(&self) -> Result<PhysInfo, HvError> {
        self.hv.physinfo()
    }
    fn domains(&self) -> Result<Vec<DomainInfo>, HvError> {
        self.hv.domains()
    }
    fn domain(&self, dom: DomId) -> Result<DomainInfo, HvError> {
        self.hv.domain(dom)
    }
    fn pause(&self, dom: DomId) -> Result<(), HvError> {
        self.hv.pause(dom)
    }
    fn unpause(&self, dom: DomId) -> Result<(), HvError> {
        self.hv.unpause(dom)
    }
    fn maximum_gpfn(&self, dom: DomId) -> Result<Gfn, HvError> {
        self.hv.maximum_gpfn(dom)
    }
    fn set_sharing(&self, dom: DomId, enable: bool) -> Result<(), HvError> {
        self.hv.set_sharing(dom, enable)
    }
    fn nominate_gfn(&self, dom: DomId, gfn: Gfn) -> Result<SharingHandle, HvError> {
        if self.vanish_on_nominate.get() == Some(dom) {
            self.vanish_on_nominate.set(None);
            self.hv.remove_domain(dom);
        }
        self.hv.nominate_gfn(dom, gfn)
    }
    fn nominate_gref(&self, dom: DomId, gref: GrantRef) -> Result<SharingHandle, HvError> {
        self.hv.nominate_gref(dom, gref)
    }
    fn share(&self, source: SharePage, client: SharePage) -> Result<(), HvError> {
        let hook = *self.write_on_share.borrow();
        if let Some(((dom, gfn), write_client)) = hook {
            if (client.dom, client.gfn) == (dom, gfn) {
                self.write_on_share.replace(None);
                let (d, g) = if write_client {
                    (client.dom, client.gfn)
                } else {
                    (source.dom, source.gfn)
                };
                self.guest_write(d, g);
            }
        }
        assert!(
            !self.shared.borrow().contains(&(client.dom, client.gfn)),
            "Xen BUG: client {}/{} is already shared",
            client.dom,
            client.gfn
        );
        self.hv.share(source, client)?;
        let mut shared = self.shared.borrow_mut();
        shared.insert((source.dom, source.gfn));
        shared.insert((client.dom, client.gfn));
        Ok(())
    }
    fn sharing_freed_pages(&self) -> Result<u64, HvError> {
        self.hv.sharing_freed_pages()
    }
    fn sharing_used_frames(&self) -> Result<u64, HvError> {
        self.hv.sharing_used_frames()
    }
    fn vcpu_registers(&self, dom: DomId, vcpu: u32) -> Result<VcpuRegs, HvError> {
        self.hv.vcpu_registers(dom, vcpu)
    }
}

#[test]
fn client_written_after_nominate_is_not_shared() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let racing = Racing::new(&hv);
    racing.write_on_share.replace(Some(((B, Gfn(7)), true)));
    let mut scanner = SharingScanner::new(&racing, &fm, &xs, config(false));
    let s = scanner.round(&[]).unwrap();
    assert!(
        racing.write_on_share.borrow().is_none(),
        "the write happened"
    );
    assert!(!hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
    assert_eq!(&hv.page(B, Gfn(7)).unwrap()[..11], b"guest write");
    assert_eq!(hv.page(A, Gfn(7)).unwrap(), page("pair"));
    assert_eq!(s.rejected_changed, 1, "{s:?}");
}

#[test]
fn source_written_after_nominate_stops_its_group_only() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let racing = Racing::new(&hv);
    // The group "common-3": source A/3, clients B/3, C/3. The guest writes
    // A/3 just before B/3 is shared into it.
    racing.write_on_share.replace(Some(((B, Gfn(3)), false)));
    let mut scanner = SharingScanner::new(&racing, &fm, &xs, config(false));
    scanner.round(&[]).unwrap();
    assert_eq!(&hv.page(A, Gfn(3)).unwrap()[..11], b"guest write");
    assert_eq!(hv.page(B, Gfn(3)).unwrap(), page("common-3"));
    assert!(!hv.same_frame((A, Gfn(3)), (B, Gfn(3))));
    assert!(!hv.same_frame((A, Gfn(3)), (C, Gfn(3))));
    // The other groups went ahead.
    assert!(hv.same_frame((A, Gfn(2)), (B, Gfn(2))));
    // Next round: B/3 and C/3 still match each other.
    scanner.round(&[]).unwrap();
    assert!(hv.same_frame((B, Gfn(3)), (C, Gfn(3))));
    assert_eq!(&hv.page(A, Gfn(3)).unwrap()[..11], b"guest write");
}

#[test]
fn a_domain_vanishing_mid_scan_does_not_stop_the_others() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let racing = Racing::new(&hv);
    racing.vanish_on_nominate.set(Some(B));
    let mut scanner = SharingScanner::new(&racing, &fm, &xs, config(false));
    let s = scanner.round(&[]).unwrap();
    assert_eq!(s.vanished, [2], "{s:?}");
    assert!(hv.domain(B).is_err());
    for g in 0..4 {
        assert!(hv.same_frame((A, Gfn(g)), (C, Gfn(g))), "gfn {g}");
    }
    assert!(scanner.stats().iter().all(|d| d.domid != 2));
    // The next round carries on without it.
    let s = scanner.round(&[]).unwrap();
    assert_eq!(s.domains, [1, 3]);
    assert!(s.vanished.is_empty());
}

#[test]
fn a_domain_gone_before_its_scan_is_skipped() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    scanner.round(&[]).unwrap();
    hv.remove_domain(A);
    let s = scanner.round(&[]).unwrap();
    assert_eq!(s.domains, [2, 3]);
    assert!(hv.same_frame((B, Gfn(0)), (C, Gfn(0))));
}

#[test]
fn changing_pages_wait_for_a_stable_round() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(true));
    scanner.round(&[]).unwrap();
    // Between rounds both copies of "pair" change to the same new bytes: equal
    // now, but not stable, so not shared yet (KSM's unstable tree).
    for dom in [A, B] {
        hv.set_page(dom, Gfn(7), &page("pair-v2"));
    }
    scanner.round(&[]).unwrap();
    assert!(!hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
    assert!(hv.same_frame((A, Gfn(0)), (B, Gfn(0))));
    scanner.round(&[]).unwrap();
    assert!(hv.same_frame((A, Gfn(7)), (B, Gfn(7))));
}

#[test]
fn restart_finds_pages_already_shared_and_shares_nothing_twice() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    SharingScanner::new(&hv, &fm, &xs, config(false))
        .round(&[])
        .unwrap();
    let freed = hv.sharing_freed_pages().unwrap();
    assert!(freed > 0);
    // A new daemon knows nothing; Xen remembers.
    let mut fresh = SharingScanner::new(&hv, &fm, &xs, config(false));
    let s = fresh.round(&[]).unwrap();
    assert_eq!(s.pages_shared, 0, "{s:?}");
    assert_eq!(s.already_shared, freed);
    assert_eq!(hv.sharing_freed_pages().unwrap(), freed);
    // And the round after that does not even nominate them again.
    let s = fresh.round(&[]).unwrap();
    assert_eq!((s.candidates, s.already_shared), (0, 0), "{s:?}");
}

#[test]
fn copy_on_write_break_is_counted_and_isolated() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    scanner.round(&[]).unwrap();
    let freed = hv.sharing_freed_pages().unwrap();
    // B writes its shared copy of "common-1": it gets a private copy.
    let m = fm
        .map(B, &[Gfn(1)], Protection::ReadWrite, Placement::Anywhere)
        .unwrap();
    m.write(0, 0, b"B's own").unwrap();
    drop(m);
    assert_eq!(hv.page(A, Gfn(1)).unwrap(), page("common-1"));
    assert_eq!(hv.page(C, Gfn(1)).unwrap(), page("common-1"));
    assert_eq!(hv.sharing_freed_pages().unwrap(), freed - 1);
    scanner.round(&[]).unwrap();
    let b = scanner.stats().into_iter().find(|s| s.domid == 2).unwrap();
    assert_eq!(b.unshared_since, 1);
    assert_eq!(&hv.page(B, Gfn(1)).unwrap()[..7], b"B's own");
}

/// XXH3, but while `armed`, hashing B's own page (gfn 6, so B's scan has
/// begun) makes B write its copy of gfn 1: a copy-on-write break in the
/// middle of the round, after the scanner looked at B's counters.
struct WritesDuringScan<'a> {
    fm: &'a FakeForeignMemory,
    armed: &'a Cell<bool>,
}
impl PageHasher for WritesDuringScan<'_> {
    fn hash(&self, page: &[u8; PAGE_SIZE]) -> u64 {
        if self.armed.get() && page[..] == self::page(&format!("own-{B}"))[..] {
            self.armed.set(false);
            let m = self
                .fm
                .map(B, &[Gfn(1)], Protection::ReadWrite, Placement::Anywhere)
                .unwrap();
            m.write(0, 0, b"B's own").unwrap();
        }
        Xxh3Hasher.hash(page)
    }
}

#[test]
fn copy_on_write_break_during_a_round_is_counted() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let armed = Cell::new(false);
    let hasher = WritesDuringScan {
        fm: &fm,
        armed: &armed,
    };
    let mut scanner =
        SharingScanner::with_parts(&hv, &fm, &xs, config(false), hasher, SystemClock::default());
    scanner.round(&[]).unwrap();
    let freed = hv.sharing_freed_pages().unwrap();
    armed.set(true);
    scanner.round(&[]).unwrap();
    assert!(!armed.get());
    assert_eq!(hv.sharing_freed_pages().unwrap(), freed - 1);
    let b = scanner.stats().into_iter().find(|s| s.domid == 2).unwrap();
    assert_eq!(b.unshared_since, 1);
    // Counted once: the next round sees no new break.
    scanner.round(&[]).unwrap();
    let b = scanner.stats().into_iter().find(|s| s.domid == 2).unwrap();
    assert_eq!(b.unshared_since, 1);
}

#[test]
fn only_restricts_to_the_named_domains() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    let s = scanner.round(&[A, C]).unwrap();
    assert_eq!(s.domains, [1, 3]);
    assert_eq!(hv.domain(B).unwrap().shr_pages, 0);
    assert!(hv.same_frame((A, Gfn(0)), (C, Gfn(0))));
}

#[test]
fn stock_xen_without_sharing_is_a_clear_error() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    hv.set_sharing_supported(false);
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    let err = scanner.round(&[]).unwrap_err();
    assert!(matches!(
        err,
        circ_memshare::MemshareError::SharingUnsupported(_)
    ));
}

#[test]
fn pages_mapped_elsewhere_are_skipped_not_fatal() {
    let (hv, xs) = host();
    let fm: FakeForeignMemory = hv.foreign_memory();
    // A backend keeps B's gfn 2 mapped: nominate fails with E2BIG.
    let held = fm
        .map(B, &[Gfn(2)], Protection::Read, Placement::Anywhere)
        .unwrap();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(false));
    let s = scanner.round(&[]).unwrap();
    assert_eq!(s.failed, 1, "{s:?}");
    assert!(!hv.same_frame((A, Gfn(2)), (B, Gfn(2))));
    assert!(hv.same_frame((A, Gfn(2)), (C, Gfn(2))));
    drop(held);
    let touched: BTreeSet<_> = s.domains.iter().copied().collect();
    assert_eq!(touched, BTreeSet::from([1, 2, 3]));
}

#[test]
fn already_shared_pages_are_never_share_clients() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let xen = Racing::new(&hv);
    // Two frames with the same bytes: A/11 + C/11 first, then A/10 + B/10
    // (that daemon must not take the shared A/11 as a client either).
    for (dom, gfn) in [(A, 11), (C, 11)] {
        hv.set_page(dom, Gfn(gfn), &page("twice"));
    }
    SharingScanner::new(&xen, &fm, &xs, config(false))
        .round(&[A, C])
        .unwrap();
    for (dom, gfn) in [(A, 10), (B, 10)] {
        hv.set_page(dom, Gfn(gfn), &page("twice"));
    }
    SharingScanner::new(&xen, &fm, &xs, config(false))
        .round(&[A, B])
        .unwrap();
    assert!(hv.same_frame((A, Gfn(10)), (B, Gfn(10))));
    assert!(hv.same_frame((A, Gfn(11)), (C, Gfn(11))));
    assert!(!hv.same_frame((A, Gfn(10)), (A, Gfn(11))));

    // A restarted daemon over all three: merging A/11's frame into A/10's
    // is what crashed Xen in the lab. It must not be tried (the strict
    // fake panics if it is); fresh pages are still shared.
    hv.set_page(B, Gfn(12), &page("new"));
    hv.set_page(C, Gfn(12), &page("new"));
    let mut restarted = SharingScanner::new(&xen, &fm, &xs, config(false));
    let s = restarted.round(&[]).unwrap();
    assert!(hv.same_frame((B, Gfn(12)), (C, Gfn(12))), "{s:?}");
    assert!(!hv.same_frame((A, Gfn(10)), (A, Gfn(11))));
    assert_eq!(hv.page(C, Gfn(11)).unwrap(), page("twice"));
    // And the same daemon's next rounds stay within the rule too.
    restarted.round(&[]).unwrap();
}

#[test]
fn duplicate_pages_measure_possible_sharing_before_and_after() {
    let (hv, xs) = host();
    let fm = hv.foreign_memory();
    let mut scanner = SharingScanner::new(&hv, &fm, &xs, config(true));

    // A, B, C: 23 pages; distinct: common-0..3, zero, own-1..3, pair = 9.
    let first = scanner.round(&[]).unwrap();
    assert_eq!(first.pages_scanned, 23);
    assert_eq!(first.zero_pages, 6);
    assert_eq!(first.duplicate_pages, 23 - 9);
    assert_eq!(hv.sharing_freed_pages().unwrap(), 0);

    // Shared pages still count: afterwards freed == possible.
    let second = scanner.round(&[]).unwrap();
    assert_eq!(second.duplicate_pages, 14);
    let third = scanner.round(&[]).unwrap();
    assert_eq!(third.duplicate_pages, 14);
    assert_eq!(third.zero_pages, 6);
    assert_eq!(hv.sharing_freed_pages().unwrap(), third.duplicate_pages);

    // A domain narrowed out of the round does not count.
    let only_a = scanner.round(&[A]).unwrap();
    assert_eq!(only_a.pages_scanned, 8);
    assert_eq!(
        only_a.duplicate_pages, 1,
        "within A only zero page 5 copies 4"
    );
}
