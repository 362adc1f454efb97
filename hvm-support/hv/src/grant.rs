//! The [`GrantTable`] trait: pages other domains granted us, mapped (for
//! shared rings) or copied to and from (for data).

use crate::ring::RingMemory;
use crate::{DomId, ErrorKind, GrantRef, HvError, PAGE_SIZE};

/// Maps and copies granted pages (libxengnttab over /dev/xen/gntdev).
pub trait GrantTable {
    type Mapping: GrantMapping;

    /// Map the pages `dom` granted us as `refs`, in this order, into one
    /// contiguous read-write range, as a back end maps a front end's ring
    /// (`xengnttab_map_domain_grant_refs`). All or nothing: a ref that is
    /// not granted, or granted read-only, fails the call. An empty `refs`
    /// is `InvalidInput`.
    fn map_ring(&self, dom: DomId, refs: &[GrantRef]) -> Result<Self::Mapping, HvError>;

    /// Run a batch of copies in one call. `Err` means the batch failed as a
    /// whole (nothing was copied, e.g. an operation leaves its page);
    /// otherwise each operation has its own result.
    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> Result<Vec<Result<(), GrantCopyError>>, HvError>;
}

/// Granted pages mapped contiguously by [`GrantTable::map_ring`]; unmapped
/// on drop. A ring lives in it through [`RingMemory`].
pub trait GrantMapping: RingMemory {
    /// The granting domain.
    fn dom(&self) -> DomId;

    /// The refs mapped, one page each, in order.
    fn refs(&self) -> &[GrantRef];
}

/// One grant-copy operation. `offset + len` must stay within the granted page.
#[derive(Debug)]
pub enum GrantCopy<'a> {
    /// Copy from the guest's granted page into `buf`.
    FromGrant {
        dom: DomId,
        gref: GrantRef,
        offset: u16,
        buf: &'a mut [u8],
    },
    /// Copy `data` into the guest's granted page.
    ToGrant {
        dom: DomId,
        gref: GrantRef,
        offset: u16,
        data: &'a [u8],
    },
}

impl GrantCopy<'_> {
    /// The granting domain, its ref, the offset in the page and the length.
    pub fn target(&self) -> (DomId, GrantRef, u16, usize) {
        match self {
            GrantCopy::FromGrant {
                dom,
                gref,
                offset,
                buf,
            } => (*dom, *gref, *offset, buf.len()),
            GrantCopy::ToGrant {
                dom,
                gref,
                offset,
                data,
            } => (*dom, *gref, *offset, data.len()),
        }
    }

    /// `InvalidInput` if the operation leaves its page: implementations
    /// refuse the whole batch before copying anything.
    pub fn check_in_page(&self) -> Result<(), HvError> {
        let (dom, gref, offset, len) = self.target();
        if usize::from(offset) + len > PAGE_SIZE {
            return Err(HvError::with_kind(
                format!(
                    "grant copy of {len} bytes at {offset} leaves grant {gref} of domain {dom}"
                ),
                ErrorKind::InvalidInput,
                None,
            ));
        }
        Ok(())
    }
}

/// A per-operation failure: Xen's `GNTST_*` status (negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("grant copy failed with status {0}")]
pub struct GrantCopyError(pub i16);

impl GrantCopyError {
    pub const BAD_DOMAIN: Self = Self(-2);
    pub const BAD_GNTREF: Self = Self(-3);
    pub const PERMISSION_DENIED: Self = Self(-8);
}
