//! Reading a PV guest's linear p2m list with the walker, the way Xen's
//! save code does (`tools/libs/guest/xg_sr_save_x86_pv.c`, `map_p2m_list`).
//!
//! A 64-bit PV guest publishes in its shared_info `arch.max_pfn`,
//! `p2m_cr3` (an address space, as a CR3) and `p2m_vaddr` (where, in it,
//! `p2m[0..max_pfn]` lives) and bumps `p2m_generation` around each change.
//! Reading shared_info is the caller's part (not done yet in `circ-xen`,
//! see `docs/shadow.md`); with those three numbers, [`read_p2m_list`] gives
//! the list that [`crate::M2pMap::from_p2m`] inverts. Callers compare
//! `p2m_generation` before and after and retry if it moved.

use circ_hv::{ForeignMapping, ForeignMemory, Gfn, Mfn, Placement, Protection, PAGE_SIZE};

use crate::{translate_va, Identity, Root, ShadowError, TableCache};

/// Largest list read: 2^28 pfns (a 1 TiB guest), 2 GiB of list.
pub const MAX_P2M_ENTRIES: u64 = 1 << 28;

const ENTRIES_PER_PAGE: u64 = (PAGE_SIZE / 8) as u64;

/// Read `max_pfn` entries of the p2m list at `p2m_vaddr` (page-aligned)
/// under `root` (from `Root::from_cr3(dom, p2m_cr3)`). Entries are machine
/// frames as the guest wrote them (`!0` for none): guest data, to be
/// validated by whoever uses them.
pub fn read_p2m_list<F: ForeignMemory>(
    cache: &mut TableCache<F>,
    root: Root,
    p2m_vaddr: u64,
    max_pfn: u64,
) -> Result<Vec<Mfn>, ShadowError> {
    if max_pfn > MAX_P2M_ENTRIES {
        return Err(ShadowError::LimitExceeded {
            dom: root.dom,
            what: "p2m entries",
            limit: MAX_P2M_ENTRIES,
        });
    }
    if p2m_vaddr % PAGE_SIZE as u64 != 0 {
        return Err(ShadowError::P2mList {
            va: p2m_vaddr,
            why: "the list is not page-aligned",
        });
    }
    let pages = max_pfn.div_ceil(ENTRIES_PER_PAGE);
    let mut frames = Vec::with_capacity(pages as usize);
    for page in 0..pages {
        let va = p2m_vaddr
            .checked_add(page * PAGE_SIZE as u64)
            .ok_or(ShadowError::NonCanonical { va: p2m_vaddr })?;
        let leaf = translate_va(cache, root, &Identity, va)?.ok_or(ShadowError::P2mList {
            va,
            why: "a page of the list is not mapped",
        })?;
        frames.push(Gfn(leaf.frame + ((va - leaf.va) >> 12)));
    }

    let mut p2m = Vec::with_capacity(max_pfn as usize);
    let mut bytes = vec![0u8; PAGE_SIZE];
    for (batch_index, batch) in frames.chunks(512).enumerate() {
        let mapping = cache
            .foreign_memory()
            .map(root.dom, batch, Protection::Read, Placement::Anywhere)
            .map_err(|source| ShadowError::P2mUnreadable {
                dom: root.dom,
                va: p2m_vaddr + (batch_index * 512 * PAGE_SIZE) as u64,
                source,
            })?;
        for index in 0..batch.len() {
            let va = p2m_vaddr + ((batch_index * 512 + index) * PAGE_SIZE) as u64;
            mapping
                .read(index, 0, &mut bytes)
                .map_err(|source| ShadowError::P2mUnreadable {
                    dom: root.dom,
                    va,
                    source,
                })?;
            for chunk in bytes.chunks_exact(8) {
                if p2m.len() as u64 == max_pfn {
                    break;
                }
                let mut raw = [0u8; 8];
                raw.copy_from_slice(chunk);
                p2m.push(Mfn(u64::from_le_bytes(raw)));
            }
        }
    }
    Ok(p2m)
}
