//! [`SharingScanner`]: one round finds identical pages across (and within)
//! the eligible domains and shares them through Xen.
//!
//! A round:
//! 1. lists the domains and keeps the eligible ones ([`crate::policy`]),
//!    turning sharing on for new ones (`xc_memshr_control`);
//! 2. reads every populated page of each, in batches of read-only foreign
//!    mappings, and keys it: all-zero, or its 64-bit hash;
//! 3. keeps as candidates the pages whose key is the same as in the last
//!    round (KSM's "unstable tree": a page that keeps changing is not worth
//!    a share that the next write breaks), unless configured otherwise;
//! 4. groups candidates by key and, per group: nominates a source page,
//!    maps it again and checks its bytes; then for each other member:
//!    nominates it (after its mapping is gone: Xen refuses with E2BIG while
//!    we map it), maps it read-only, compares it byte for byte with the
//!    source, unmaps it and only then shares it into the source.
//!
//! Why compare after nominating: nominate makes the page read-only in the
//! guest's p2m, and a guest write to it afterwards makes it private again
//! and invalidates the handle, so the share fails. The bytes read after
//! nomination are therefore the bytes that get shared. Xen itself compares
//! nothing. A hash collision or a page that changed since it was hashed is
//! caught by the compare and simply not shared.
//!
//! Any operation on a domain that fails because the domain is gone marks it
//! vanished for the rest of the round; the other domains go on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use circ_hv::populated::populated_ranges;
use circ_hv::{
    DomId, ErrorKind, ForeignMapping, ForeignMemory, Gfn, GfnRange, HvError, Hypervisor, Placement,
    Protection, SharePage, ShareSide, SharingHandle, XenStore, PAGE_SIZE,
};
use serde::{Deserialize, Serialize};

use crate::hash::{PageHasher, PageKey, Xxh3Hasher};
use crate::log_limit::LogLimiter;
use crate::policy::{domain_name, Eligibility, Policy};
use crate::throttle::{Clock, Limits, SystemClock, Throttle};
use crate::MemshareError;

/// Rounds a domain's populated ranges are reused for at most.
const RANGES_REFRESH_ROUNDS: u32 = 30;

/// Warnings about guest-triggered trouble per [`WARNING_WINDOW`], before
/// they are only counted.
const WARNINGS_PER_WINDOW: u32 = 8;
const WARNING_WINDOW: Duration = Duration::from_secs(60);

/// Tunables of a scanner.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanConfig {
    /// Pages per foreign mapping while hashing.
    pub batch_pages: usize,
    /// Client pages nominated, mapped and compared together while sharing.
    pub share_chunk: usize,
    pub limits: Limits,
    /// Only share pages whose key did not change since the previous round.
    pub require_stable: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            batch_pages: 512,
            share_chunk: 256,
            limits: Limits {
                pages_per_sec: 50_000,
                cpu_budget: 0.5,
            },
            require_stable: true,
        }
    }
}

/// Per-domain figures. Cumulative unless said otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    pub domid: u16,
    pub name: String,
    pub rounds: u64,
    /// Pages read in the last round.
    pub pages_scanned: u64,
    /// Pages of this domain this daemon shared into another page (each one
    /// a frame freed).
    pub pages_shared: u64,
    /// Of those, all-zero pages.
    pub zero_pages_shared: u64,
    /// Pages found already shared with their group's source (last round).
    pub already_shared: u64,
    /// Candidates whose bytes differed from the source after nomination: a
    /// hash collision or a page written since it was hashed.
    pub rejected_changed: u64,
    /// Pages that could not be nominated, mapped or shared (busy, special).
    pub failed: u64,
    /// Copy-on-write breaks seen since this daemon started: drops of Xen's
    /// count of the domain's shared pages between rounds, and within a
    /// round its shortfall against our own nominations' growth.
    pub unshared_since: u64,
    /// Xen's count of the domain's pages backed by a shared frame, at the
    /// end of the last round.
    pub shr_pages: u64,
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundSummary {
    pub round: u64,
    pub domains: Vec<u16>,
    pub vanished: Vec<u16>,
    pub pages_scanned: u64,
    pub candidates: u64,
    pub groups: u64,
    pub pages_shared: u64,
    pub zero_pages_shared: u64,
    pub already_shared: u64,
    pub rejected_changed: u64,
    pub failed: u64,
    pub duration_ms: u64,
    pub throttled_ms: u64,
    /// All-zero pages among those scanned this round.
    #[serde(default)]
    pub zero_pages: u64,
    /// Pages scanned this round minus the distinct contents (keys) among
    /// them: the frames sharing could free if every page that is equal now
    /// were shared (Satori's "possible sharing"). Pages already shared
    /// count, so `freed_pages / duplicate_pages` is the fraction achieved.
    #[serde(default)]
    pub duplicate_pages: u64,
}

#[derive(Debug)]
struct DomainScan {
    /// Key of every page seen last round.
    last: HashMap<Gfn, PageKey>,
    /// Pages known to be backed by a shared frame (unchanged since).
    known_shared: HashSet<Gfn>,
    /// Pages this daemon nominated while private and has not shared since:
    /// their frame maps only themselves, so they are safe share clients
    /// (see [`SharingScanner::nominate_private`]).
    nominated_only: HashMap<Gfn, SharingHandle>,
    sharing_on: bool,
    /// Populated ranges, probed again when the domain's memory changes
    /// (`tot_pages + shr_pages`, which sharing and unsharing leave alone)
    /// or every [`RANGES_REFRESH_ROUNDS`]: probing walks `0..=max_gpfn`.
    ranges: Vec<GfnRange>,
    ranges_signature: Option<u64>,
    ranges_age: u32,
    /// Xen's `shr_pages` when this round began (set by `prepare_domain`,
    /// taken by `finish_round`), and how much this daemon's own nominations
    /// grew it since: copy-on-write breaks during the round are the
    /// shortfall at its end.
    round_start_shr: Option<u64>,
    grown: u64,
    stats: DomainStats,
}

impl DomainScan {
    fn new(dom: DomId, name: String) -> Self {
        Self {
            last: HashMap::new(),
            known_shared: HashSet::new(),
            nominated_only: HashMap::new(),
            sharing_on: false,
            ranges: Vec::new(),
            ranges_signature: None,
            ranges_age: 0,
            round_start_shr: None,
            grown: 0,
            stats: DomainStats {
                domid: dom.0,
                name,
                ..DomainStats::default()
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    dom: DomId,
    gfn: Gfn,
    known_shared: bool,
}

/// Per-round bookkeeping.
#[derive(Debug, Default)]
struct Round {
    summary: RoundSummary,
    gone: HashSet<DomId>,
}

/// A warning about something a guest can cause (a page it keeps unsharable
/// fails every round): a few per minute, the rest counted in the next.
fn warn_limited(limit: &mut LogLimiter, dom: DomId, gfn: Option<Gfn>, what: &str, err: &HvError) {
    let Some(suppressed) = limit.allow(Instant::now()) else {
        return;
    };
    let errno = err.errno().map(|e| e.to_string()).unwrap_or_default();
    match gfn {
        Some(gfn) => {
            tracing::warn!(domid = %dom, %gfn, kind = ?err.kind(), %errno, suppressed, "{what}")
        }
        None => tracing::warn!(domid = %dom, error = %err, %errno, suppressed, "{what}"),
    }
}

/// Finds and shares identical pages of the eligible domains.
#[derive(Debug)]
pub struct SharingScanner<'a, H, F, S, P = Xxh3Hasher, C = SystemClock>
where
    C: Clock,
{
    hv: &'a H,
    fm: &'a F,
    xs: &'a S,
    hasher: P,
    throttle: Throttle<C>,
    config: ScanConfig,
    domains: BTreeMap<DomId, DomainScan>,
    rounds: u64,
    warn_log: LogLimiter,
}

impl<'a, H, F, S> SharingScanner<'a, H, F, S>
where
    H: Hypervisor,
    F: ForeignMemory,
    S: XenStore,
{
    pub fn new(hv: &'a H, fm: &'a F, xs: &'a S, config: ScanConfig) -> Self {
        Self::with_parts(hv, fm, xs, config, Xxh3Hasher, SystemClock::default())
    }
}

impl<'a, H, F, S, P, C> SharingScanner<'a, H, F, S, P, C>
where
    H: Hypervisor,
    F: ForeignMemory,
    S: XenStore,
    P: PageHasher,
    C: Clock,
{
    /// A scanner with a chosen hasher and clock (tests force collisions and
    /// time with these).
    pub fn with_parts(
        hv: &'a H,
        fm: &'a F,
        xs: &'a S,
        config: ScanConfig,
        hasher: P,
        clock: C,
    ) -> Self {
        Self {
            hv,
            fm,
            xs,
            hasher,
            throttle: Throttle::new(config.limits, clock),
            config,
            domains: BTreeMap::new(),
            rounds: 0,
            warn_log: LogLimiter::new(WARNINGS_PER_WINDOW, WARNING_WINDOW),
        }
    }

    /// Figures per domain currently followed, in domid order.
    pub fn stats(&self) -> Vec<DomainStats> {
        self.domains.values().map(|d| d.stats.clone()).collect()
    }

    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// One round over the eligible domains; `only`, if not empty, narrows
    /// them further to those domids. Fails only on host-wide trouble (no
    /// sharing in this hypervisor, xenstore or domain listing failing).
    pub fn round(&mut self, only: &[DomId]) -> Result<RoundSummary, MemshareError> {
        let started = Instant::now();
        let slept_before = self.throttle.slept();
        self.throttle.reset();
        self.rounds += 1;
        let mut round = Round {
            summary: RoundSummary {
                round: self.rounds,
                ..RoundSummary::default()
            },
            ..Round::default()
        };

        let eligible = self.eligible(only)?;
        // Forget domains that left, or are no longer eligible.
        self.domains.retain(|dom, _| eligible.contains_key(dom));
        for (dom, name) in &eligible {
            let scan = self
                .domains
                .entry(*dom)
                .or_insert_with(|| DomainScan::new(*dom, name.clone()));
            scan.stats.name.clone_from(name);
        }

        let mut candidates: HashMap<PageKey, Vec<Candidate>> = HashMap::new();
        for dom in eligible.keys().copied() {
            if let Err(e) = self.prepare_domain(dom) {
                if e.kind() == ErrorKind::NotSupported {
                    return Err(MemshareError::from_sharing(e));
                }
                self.domain_failed(&mut round, dom, "cannot enable sharing", &e);
                continue;
            }
            match self.scan_domain(dom, &mut round) {
                Ok(found) => {
                    for (key, candidate) in found {
                        candidates.entry(key).or_default().push(candidate);
                    }
                }
                Err(e) => self.domain_failed(&mut round, dom, "scan failed", &e),
            }
        }

        round.summary.duplicate_pages = duplicate_pages(
            self.domains
                .iter()
                .filter(|(dom, _)| eligible.contains_key(dom) && !round.gone.contains(dom))
                .flat_map(|(_, scan)| scan.last.values()),
        );

        // Biggest groups first: the zero pages usually, the biggest win.
        let mut groups: Vec<(PageKey, Vec<Candidate>)> = candidates
            .into_iter()
            .filter_map(|(key, members)| prune_group(members).map(|m| (key, m)))
            .collect();
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        round.summary.groups = groups.len() as u64;
        for (key, members) in groups {
            round.summary.candidates += members.len() as u64;
            self.share_group(key, members, &mut round);
        }

        self.finish_round(&mut round);
        round.summary.domains = eligible.keys().map(|d| d.0).collect();
        round.summary.vanished = round.gone.iter().map(|d| d.0).collect();
        round.summary.vanished.sort_unstable();
        round.summary.duration_ms = started.elapsed().as_millis() as u64;
        round.summary.throttled_ms = self
            .throttle
            .slept()
            .saturating_sub(slept_before)
            .as_millis() as u64;
        Ok(round.summary)
    }

    /// Eligible domains with their names.
    fn eligible(&self, only: &[DomId]) -> Result<BTreeMap<DomId, String>, MemshareError> {
        let policy = Policy::read(self.xs)?;
        let mut eligible = BTreeMap::new();
        for info in self.hv.domains()? {
            if !only.is_empty() && !only.contains(&info.domid) {
                continue;
            }
            let name = domain_name(self.xs, info.domid)?;
            if policy.eligibility(&info, &name) == Eligibility::Eligible {
                eligible.insert(info.domid, name);
            }
        }
        Ok(eligible)
    }

    fn prepare_domain(&mut self, dom: DomId) -> Result<(), HvError> {
        let Some(scan) = self.domains.get_mut(&dom) else {
            return Ok(());
        };
        // Copy-on-write breaks since the last round show as a drop of shr_pages.
        let shr = self.hv.domain(dom)?.shr_pages;
        if scan.stats.rounds > 0 && shr < scan.stats.shr_pages {
            scan.stats.unshared_since += scan.stats.shr_pages - shr;
        }
        scan.stats.shr_pages = shr;
        scan.round_start_shr = Some(shr);
        scan.grown = 0;
        if !scan.sharing_on {
            self.hv.set_sharing(dom, true)?;
            scan.sharing_on = true;
        }
        Ok(())
    }

    /// A domain-level failure: vanished if the domain is gone or dying,
    /// otherwise logged; either way the domain sits out the round.
    fn domain_failed(&mut self, round: &mut Round, dom: DomId, what: &str, err: &HvError) {
        if self.is_gone(dom) {
            tracing::info!(domid = %dom, "domain went away during the round");
        } else {
            warn_limited(&mut self.warn_log, dom, None, what, err);
        }
        round.gone.insert(dom);
    }

    fn is_gone(&self, dom: DomId) -> bool {
        match self.hv.domain(dom) {
            Ok(info) => matches!(
                info.state,
                circ_hv::DomainState::Dying | circ_hv::DomainState::Shutdown
            ),
            Err(_) => true,
        }
    }

    /// Read and key every populated page; return this round's candidates.
    fn scan_domain(
        &mut self,
        dom: DomId,
        round: &mut Round,
    ) -> Result<Vec<(PageKey, Candidate)>, HvError> {
        let info = self.hv.domain(dom)?;
        let signature = info.tot_pages.saturating_add(info.shr_pages);
        let Some(scan) = self.domains.get_mut(&dom) else {
            return Ok(Vec::new());
        };
        if scan.ranges_signature != Some(signature) || scan.ranges_age >= RANGES_REFRESH_ROUNDS {
            scan.ranges = populated_ranges(self.hv, self.fm, dom)?;
            scan.ranges_signature = Some(signature);
            scan.ranges_age = 0;
        }
        scan.ranges_age += 1;
        // A handful of ranges: cloned, so an error below leaves them intact.
        let ranges = scan.ranges.clone();
        let Some(scan) = self.domains.get(&dom) else {
            return Ok(Vec::new());
        };
        let previous = &scan.last;
        let known_shared = &scan.known_shared;

        let mut keys: HashMap<Gfn, PageKey> = HashMap::with_capacity(previous.len());
        let mut found = Vec::new();
        let mut still_shared = HashSet::with_capacity(known_shared.len());
        let mut page = Box::new([0u8; PAGE_SIZE]);
        let mut scanned = 0u64;
        let mut gfns = Vec::with_capacity(self.config.batch_pages);
        let all = ranges.iter().flat_map(|r| r.iter());
        let mut all = all.peekable();
        while all.peek().is_some() {
            gfns.clear();
            gfns.extend(all.by_ref().take(self.config.batch_pages.max(1)));
            let mapping = self
                .fm
                .map(dom, &gfns, Protection::Read, Placement::Anywhere)?;
            for (index, gfn) in gfns.iter().enumerate() {
                if mapping.page_error(index).is_some() {
                    continue;
                }
                if mapping.read(index, 0, &mut page[..]).is_err() {
                    continue;
                }
                scanned += 1;
                let key = PageKey::of(&self.hasher, &page);
                if key == PageKey::Zero {
                    round.summary.zero_pages += 1;
                }
                let prev = previous.get(gfn).copied();
                let unchanged = prev == Some(key);
                let was_shared = known_shared.contains(gfn);
                if was_shared && unchanged {
                    still_shared.insert(*gfn);
                }
                if unchanged || !self.config.require_stable {
                    found.push((
                        key,
                        Candidate {
                            dom,
                            gfn: *gfn,
                            known_shared: was_shared && unchanged,
                        },
                    ));
                }
                keys.insert(*gfn, key);
            }
            // Unmap before anything is nominated: E2BIG otherwise.
            drop(mapping);
            self.throttle.pace(gfns.len() as u64);
        }
        round.summary.pages_scanned += scanned;
        if let Some(scan) = self.domains.get_mut(&dom) {
            scan.last = keys;
            scan.known_shared = still_shared;
            scan.stats.pages_scanned = scanned;
            scan.stats.already_shared = 0;
        }
        Ok(found)
    }

    /// Nominate, verify and share one group of pages with the same key.
    fn share_group(&mut self, key: PageKey, members: Vec<Candidate>, round: &mut Round) {
        let mut members = members.into_iter();
        // The source: the first member that nominates and still has the key.
        let (source, source_bytes) = loop {
            let Some(c) = members.next() else { return };
            if members.len() == 0 {
                return;
            }
            if round.gone.contains(&c.dom) {
                continue;
            }
            let before = self.hv.domain(c.dom).map(|i| i.shr_pages);
            let handle = match self.hv.nominate_gfn(c.dom, c.gfn) {
                Ok(h) => h,
                Err(e) => {
                    self.page_failed(round, c, "cannot nominate", &e);
                    continue;
                }
            };
            let after = self.hv.domain(c.dom).map(|i| i.shr_pages);
            if let (Ok(before), Ok(after)) = (before, after) {
                if after > before {
                    self.note_nominated(c.dom, c.gfn, handle);
                    self.note_growth(c.dom, after - before);
                }
            }
            match self.read_nominated(c.dom, &[c.gfn]) {
                Ok(mut pages) => match pages.pop().flatten() {
                    Some(bytes) if PageKey::of(&self.hasher, &bytes) == key => {
                        let page = SharePage {
                            dom: c.dom,
                            gfn: c.gfn,
                            handle,
                        };
                        break (page, bytes);
                    }
                    Some(_) => self.count(c.dom, round, |s, r| {
                        s.rejected_changed += 1;
                        r.rejected_changed += 1;
                    }),
                    None => self.count(c.dom, round, |s, r| {
                        s.failed += 1;
                        r.failed += 1;
                    }),
                },
                Err(e) => self.page_failed(round, c, "cannot map a nominated page", &e),
            }
        };

        let clients: Vec<Candidate> = members.collect();
        for chunk in clients.chunks(self.config.share_chunk.max(1)) {
            if round.gone.contains(&source.dom) {
                return;
            }
            if !self.share_chunk(key, source, &source_bytes, chunk, round) {
                // The source changed: what is left waits for the next round.
                return;
            }
        }
    }

    /// Returns false if the source's handle went stale.
    fn share_chunk(
        &mut self,
        key: PageKey,
        source: SharePage,
        source_bytes: &[u8; PAGE_SIZE],
        chunk: &[Candidate],
        round: &mut Round,
    ) -> bool {
        // Nominate: the pages become read-only in their guests' p2m.
        let mut by_dom: BTreeMap<DomId, Vec<Gfn>> = BTreeMap::new();
        for c in chunk {
            if !round.gone.contains(&c.dom) {
                by_dom.entry(c.dom).or_default().push(c.gfn);
            }
        }
        let mut nominated: BTreeMap<DomId, Vec<(Gfn, SharingHandle)>> = BTreeMap::new();
        for (dom, gfns) in by_dom {
            // Nothing fresh to share in this domain: no mapping to make (a
            // map of zero frames is an error, not an empty mapping).
            if let Some(fresh) = self
                .nominate_private(dom, &gfns, source, round)
                .filter(|fresh| !fresh.is_empty())
            {
                nominated.insert(dom, fresh);
            }
        }

        // Compare, then unmap, then share.
        for (dom, pages) in nominated {
            let gfns: Vec<Gfn> = pages.iter().map(|(g, _)| *g).collect();
            let contents = match self.read_nominated(dom, &gfns) {
                Ok(contents) => contents,
                Err(e) => {
                    self.domain_failed(round, dom, "cannot map nominated pages", &e);
                    continue;
                }
            };
            for ((gfn, handle), bytes) in pages.into_iter().zip(contents) {
                let candidate = Candidate {
                    dom,
                    gfn,
                    known_shared: false,
                };
                match bytes {
                    Some(bytes) if bytes[..] == source_bytes[..] => {}
                    Some(_) => {
                        self.count(dom, round, |s, r| {
                            s.rejected_changed += 1;
                            r.rejected_changed += 1;
                        });
                        continue;
                    }
                    None => {
                        self.count(dom, round, |s, r| {
                            s.failed += 1;
                            r.failed += 1;
                        });
                        continue;
                    }
                }
                let client = SharePage { dom, gfn, handle };
                match self.hv.share(source, client) {
                    Ok(()) => {
                        self.mark_shared(source.dom, source.gfn);
                        self.mark_shared(dom, gfn);
                        self.forget_nominated(source.dom, source.gfn);
                        self.forget_nominated(dom, gfn);
                        let zero = key == PageKey::Zero;
                        self.count(dom, round, |s, r| {
                            s.pages_shared += 1;
                            r.pages_shared += 1;
                            if zero {
                                s.zero_pages_shared += 1;
                                r.zero_pages_shared += 1;
                            }
                        });
                    }
                    // The source changed: its group is done for this round.
                    Err(e) if e.kind() == ErrorKind::StaleHandle(ShareSide::Source) => {
                        self.count(source.dom, round, |s, r| {
                            s.rejected_changed += 1;
                            r.rejected_changed += 1;
                        });
                        return false;
                    }
                    Err(e) if e.kind() == ErrorKind::StaleHandle(ShareSide::Client) => {
                        self.count(dom, round, |s, r| {
                            s.rejected_changed += 1;
                            r.rejected_changed += 1;
                        });
                    }
                    Err(e) => self.page_failed(round, candidate, "cannot share", &e),
                }
            }
        }
        true
    }

    /// Nominate `gfns` of `dom` as share clients and return those that were
    /// private until now.
    ///
    /// A client must not already be shared: Xen 4.17's `share_pages` moves
    /// every gfn of the client's frame to the source and takes the p2m lock
    /// of each gfn's domain while holding the page locks; for a domain other
    /// than the two it locked up front that is a lock-order violation and
    /// Xen panics (`mm locking order violation: 24 > 16`, seen in the lab
    /// when a restarted daemon merged two already-shared frames).
    ///
    /// Nominating a private page adds one to the domain's `shr_pages` and
    /// takes a handle from Xen's global, increasing counter; an already
    /// shared page returns its old handle and changes nothing. So with
    /// `fresh` = growth of `shr_pages` over the batch, the `fresh` newest
    /// handles are the private pages. A concurrent copy-on-write break only
    /// makes `fresh` smaller: pages are skipped, never wrongly taken.
    fn nominate_private(
        &mut self,
        dom: DomId,
        gfns: &[Gfn],
        source: SharePage,
        round: &mut Round,
    ) -> Option<Vec<(Gfn, SharingHandle)>> {
        let shr = |hv: &H| hv.domain(dom).map(|i| i.shr_pages);
        let before = match shr(self.hv) {
            Ok(n) => n,
            Err(e) => {
                self.domain_failed(round, dom, "cannot read domain info", &e);
                return None;
            }
        };
        let mut got = Vec::with_capacity(gfns.len());
        for gfn in gfns {
            match self.hv.nominate_gfn(dom, *gfn) {
                Ok(h) if h == source.handle => {
                    // Already backed by the source's frame.
                    self.mark_shared(source.dom, source.gfn);
                    self.mark_shared(dom, *gfn);
                    self.count(dom, round, |s, r| {
                        s.already_shared += 1;
                        r.already_shared += 1;
                    });
                }
                Ok(h) => got.push((*gfn, h)),
                Err(e) => {
                    let c = Candidate {
                        dom,
                        gfn: *gfn,
                        known_shared: false,
                    };
                    self.page_failed(round, c, "cannot nominate", &e);
                }
            }
        }
        let after = match shr(self.hv) {
            Ok(n) => n,
            Err(e) => {
                self.domain_failed(round, dom, "cannot read domain info", &e);
                return None;
            }
        };
        self.note_growth(dom, after.saturating_sub(before));
        let fresh = usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX);
        got.sort_by_key(|(_, h)| std::cmp::Reverse(h.0));
        let not_fresh = got.split_off(fresh.min(got.len()));
        for (gfn, handle) in &got {
            self.note_nominated(dom, *gfn, *handle);
        }
        for (gfn, handle) in not_fresh {
            let ours = self
                .domains
                .get(&dom)
                .and_then(|s| s.nominated_only.get(&gfn))
                .is_some_and(|h| *h == handle);
            if ours {
                // Nominated by us earlier and never shared: still alone.
                got.push((gfn, handle));
                continue;
            }
            // Shared with other pages already: not a client, but a fine
            // source for its group next round.
            self.mark_shared(dom, gfn);
            self.count(dom, round, |s, r| {
                s.already_shared += 1;
                r.already_shared += 1;
            });
        }
        got.sort_by_key(|(g, _)| *g);
        Some(got)
    }

    /// Map nominated pages read-only, copy them out and unmap them again
    /// (share, like nominate, must not find our mapping). `None` for a page
    /// that could not be mapped or read.
    fn read_nominated(
        &self,
        dom: DomId,
        gfns: &[Gfn],
    ) -> Result<Vec<Option<Box<[u8; PAGE_SIZE]>>>, HvError> {
        let mapping = self
            .fm
            .map(dom, gfns, Protection::Read, Placement::Anywhere)?;
        let mut out = Vec::with_capacity(gfns.len());
        for index in 0..gfns.len() {
            if mapping.page_error(index).is_some() {
                out.push(None);
                continue;
            }
            let mut page = Box::new([0u8; PAGE_SIZE]);
            out.push(mapping.read(index, 0, &mut page[..]).ok().map(|()| page));
        }
        drop(mapping);
        Ok(out)
    }

    fn page_failed(&mut self, round: &mut Round, c: Candidate, what: &str, err: &HvError) {
        if err.kind() == ErrorKind::NotFound && self.is_gone(c.dom) {
            round.gone.insert(c.dom);
            return;
        }
        if err.kind() == ErrorKind::NotSupported {
            // Sharing got turned off under us (circ share disable).
            round.gone.insert(c.dom);
            return;
        }
        warn_limited(&mut self.warn_log, c.dom, Some(c.gfn), what, err);
        self.count(c.dom, round, |s, r| {
            s.failed += 1;
            r.failed += 1;
        });
    }

    fn note_nominated(&mut self, dom: DomId, gfn: Gfn, handle: SharingHandle) {
        if let Some(scan) = self.domains.get_mut(&dom) {
            scan.nominated_only.insert(gfn, handle);
        }
    }

    /// Our own nominations grew `dom`'s `shr_pages` by `n`.
    fn note_growth(&mut self, dom: DomId, n: u64) {
        if let Some(scan) = self.domains.get_mut(&dom) {
            scan.grown = scan.grown.saturating_add(n);
        }
    }

    fn forget_nominated(&mut self, dom: DomId, gfn: Gfn) {
        if let Some(scan) = self.domains.get_mut(&dom) {
            scan.nominated_only.remove(&gfn);
        }
    }

    fn mark_shared(&mut self, dom: DomId, gfn: Gfn) {
        if let Some(scan) = self.domains.get_mut(&dom) {
            scan.known_shared.insert(gfn);
        }
    }

    fn count(
        &mut self,
        dom: DomId,
        round: &mut Round,
        f: impl FnOnce(&mut DomainStats, &mut RoundSummary),
    ) {
        if let Some(scan) = self.domains.get_mut(&dom) {
            f(&mut scan.stats, &mut round.summary);
        }
    }

    fn finish_round(&mut self, round: &mut Round) {
        for dom in &round.gone {
            self.domains.remove(dom);
        }
        let doms: Vec<DomId> = self.domains.keys().copied().collect();
        for dom in doms {
            match self.hv.domain(dom) {
                Ok(info) => {
                    if let Some(scan) = self.domains.get_mut(&dom) {
                        // Breaks during the round: Xen's count fell short of
                        // where our own nominations took it. (A break during
                        // a nomination batch hides in that batch's growth:
                        // breaks may be missed, never invented.)
                        if let Some(start) = scan.round_start_shr.take() {
                            let expected = start.saturating_add(scan.grown);
                            if info.shr_pages < expected {
                                scan.stats.unshared_since += expected - info.shr_pages;
                            }
                        }
                        scan.stats.shr_pages = info.shr_pages;
                        scan.stats.rounds += 1;
                    }
                }
                Err(_) => {
                    round.gone.insert(dom);
                    self.domains.remove(&dom);
                }
            }
        }
    }
}

/// Keys seen minus distinct keys: pages that are a copy of another one.
fn duplicate_pages<'k>(keys: impl Iterator<Item = &'k PageKey>) -> u64 {
    let mut seen = 0u64;
    let mut distinct = HashSet::new();
    for key in keys {
        seen += 1;
        distinct.insert(*key);
    }
    seen - distinct.len() as u64
}

/// Keep a group only if it can share something: at least two members and
/// at least one not known to be shared already. Of the known-shared
/// members one is enough (as the source: new pages join its frame); the
/// others need not be nominated again.
fn prune_group(mut members: Vec<Candidate>) -> Option<Vec<Candidate>> {
    if members.len() < 2 || members.iter().all(|c| c.known_shared) {
        return None;
    }
    // Known-shared first, then in domid/gfn order for determinism.
    members.sort_by_key(|c| (!c.known_shared, c.dom, c.gfn));
    let shared = members.iter().take_while(|c| c.known_shared).count();
    if shared > 1 {
        members.drain(1..shared);
    }
    (members.len() >= 2).then_some(members)
}
