//! Per-page sharing state (`circ share pages`): which of a list of gfns are
//! backed by a shared frame, and by how many gfns each such frame is
//! referenced. The lab uses it to prove that the guests' buffer pages
//! themselves were shared, not only zero pages.

use std::collections::BTreeMap;

use circ_hv::{DomId, Gfn, Hypervisor};
use serde::Serialize;

use crate::MemshareError;

/// What [`page_sharing`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageSharing {
    pub domid: u16,
    /// gfns asked about.
    pub pages: u64,
    /// Backed by a sharing frame (nominated or shared).
    pub shared: u64,
    /// Backed by a frame that at least one other gfn references too.
    pub shared_with_others: u64,
    /// Private (or no page).
    pub private: u64,
    /// How many gfns had each reference count (`"2": 8192`).
    pub refs: BTreeMap<u32, u64>,
}

impl PageSharing {
    pub fn to_text(&self) -> String {
        let refs: Vec<String> = self.refs.iter().map(|(r, n)| format!("{n}x{r}")).collect();
        format!(
            "domain {}: {} pages: {} shared ({} with other pages; by references: {}), {} private\n",
            self.domid,
            self.pages,
            self.shared,
            self.shared_with_others,
            if refs.is_empty() {
                "-".to_owned()
            } else {
                refs.join(" ")
            },
            self.private
        )
    }
}

/// gfns, hexadecimal (`0x` optional), separated by white space.
pub fn parse_gfns(text: &str) -> Result<Vec<Gfn>, String> {
    text.split_whitespace()
        .map(|t| {
            let hex = t.strip_prefix("0x").unwrap_or(t);
            u64::from_str_radix(hex, 16)
                .map(Gfn)
                .map_err(|e| format!("bad gfn {t:?}: {e}"))
        })
        .collect()
}

/// Ask Xen about every gfn of `gfns` in `dom`.
pub fn page_sharing<H: Hypervisor>(
    hv: &H,
    dom: DomId,
    gfns: &[Gfn],
) -> Result<PageSharing, MemshareError> {
    let mut out = PageSharing {
        domid: dom.0,
        ..PageSharing::default()
    };
    for gfn in gfns {
        out.pages += 1;
        match hv
            .sharing_refs(dom, *gfn)
            .map_err(MemshareError::from_sharing)?
        {
            Some(refs) => {
                out.shared += 1;
                if refs >= 2 {
                    out.shared_with_others += 1;
                }
                *out.refs.entry(refs).or_default() += 1;
            }
            None => out.private += 1,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use circ_hv::fake::FakeHypervisor;
    use circ_hv::{DomainType, SharePage};

    #[test]
    fn parses_hex_with_or_without_prefix() {
        assert_eq!(
            parse_gfns(" 0x10\n1f  2 \n"),
            Ok(vec![Gfn(0x10), Gfn(0x1f), Gfn(2)])
        );
        assert!(parse_gfns("0x1 zz").is_err());
    }

    #[test]
    fn counts_shared_and_private_pages() {
        let hv = FakeHypervisor::new();
        for d in [1, 2] {
            hv.add_domain(DomId(d), DomainType::Pvh, 16);
            assert!(hv.set_sharing(DomId(d), true).is_ok());
            for g in 0..4 {
                hv.set_page(DomId(d), Gfn(g), &[g as u8 + 1; 4096]);
            }
        }
        // Page 0 of both domains shared, page 1 of domain 1 only nominated.
        let s = hv.nominate_gfn(DomId(1), Gfn(0)).expect("nominate");
        let c = hv.nominate_gfn(DomId(2), Gfn(0)).expect("nominate");
        hv.share(
            SharePage {
                dom: DomId(1),
                gfn: Gfn(0),
                handle: s,
            },
            SharePage {
                dom: DomId(2),
                gfn: Gfn(0),
                handle: c,
            },
        )
        .expect("share");
        let _ = hv.nominate_gfn(DomId(1), Gfn(1)).expect("nominate");
        let got = page_sharing(&hv, DomId(1), &[Gfn(0), Gfn(1), Gfn(2), Gfn(99)]).expect("ok");
        assert_eq!(
            (got.pages, got.shared, got.shared_with_others, got.private),
            (4, 2, 1, 2)
        );
        assert_eq!(got.refs, BTreeMap::from([(1, 1), (2, 1)]));
        assert!(got.to_text().contains("1x1 1x2"), "{}", got.to_text());
    }
}
