//! `circ xen info`: a host summary gathered through the traits, with its
//! JSON schema (serde) and its table rendering; and [`Table`], the text
//! table the per-domain listings are printed with (`circ xen info`,
//! `circ share status`).
//!
//! The JSON field names are an interface: the lab's scenarios read them
//! with jq. Change them only together with those scripts.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::hypervisor::pages_to_kib;
use crate::{DomainState, DomainType, ErrorKind, HvError, Hypervisor, Transaction, XenStore};

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub xen: XenReport,
    pub domains: Vec<DomainReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct XenReport {
    /// `major.minor.patch`, e.g. `4.17.5`.
    pub version: String,
    /// The raw extraversion, e.g. `.5-pre`.
    pub extra: String,
    pub capabilities: String,
    pub virt_caps: Vec<&'static str>,
    pub total_memory_kib: u64,
    pub free_memory_kib: u64,
    /// 0 when the hypervisor has no memory sharing (ENOSYS).
    pub sharing_freed_kib: u64,
    /// 0 when the hypervisor has no memory sharing (ENOSYS).
    pub sharing_used_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainReport {
    pub domid: u16,
    /// `/local/domain/<id>/name`; empty if the node does not exist.
    pub name: String,
    #[serde(rename = "type")]
    pub domain_type: DomainType,
    pub state: DomainState,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub vcpus: u32,
    pub shared_pages: u64,
}

impl HostReport {
    /// Ask the hypervisor and the store. A domain that disappears between
    /// the listing and the name lookup gets an empty name.
    pub fn collect<H: Hypervisor, S: XenStore>(hv: &H, xs: &S) -> Result<Self, HvError> {
        let version = hv.version()?;
        let phys = hv.physinfo()?;
        let xen = XenReport {
            version: version.release(),
            extra: version.extra,
            capabilities: version.capabilities,
            virt_caps: phys.virt_caps.names(),
            total_memory_kib: pages_to_kib(phys.total_pages),
            free_memory_kib: pages_to_kib(phys.free_pages),
            sharing_freed_kib: pages_to_kib(zero_if_unsupported(hv.sharing_freed_pages())?),
            sharing_used_kib: pages_to_kib(zero_if_unsupported(hv.sharing_used_frames())?),
        };

        let mut domains = Vec::new();
        for info in hv.domains()? {
            let path = format!("/local/domain/{}/name", info.domid);
            let name = match xs.read_string(Transaction::NONE, &path) {
                Ok(name) => name,
                Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            domains.push(DomainReport {
                domid: info.domid.0,
                name,
                domain_type: info.domain_type,
                state: info.state,
                memory_kib: info.memory_kib(),
                max_memory_kib: info.max_memory_kib(),
                vcpus: info.online_vcpus,
                shared_pages: info.shr_pages,
            });
        }
        Ok(Self { xen, domains })
    }

    /// Human-readable summary, sizes in MiB.
    pub fn to_table(&self) -> String {
        let x = &self.xen;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "Xen {} (extraversion {:?})", x.version, x.extra);
        let _ = writeln!(out, "capabilities:  {}", x.capabilities);
        let _ = writeln!(out, "virt_caps:     {}", x.virt_caps.join(" "));
        let _ = writeln!(
            out,
            "memory:        {} MiB total, {} MiB free",
            x.total_memory_kib / 1024,
            x.free_memory_kib / 1024
        );
        let _ = writeln!(
            out,
            "sharing:       {} KiB freed, {} KiB used",
            x.sharing_freed_kib, x.sharing_used_kib
        );
        let _ = writeln!(out);
        let mut table = Table::new(&[
            ("ID", Align::Right, 5),
            ("NAME", Align::Left, 0),
            ("TYPE", Align::Left, 4),
            ("STATE", Align::Left, 8),
            ("MEM(MiB)", Align::Right, 9),
            ("MAX(MiB)", Align::Right, 9),
            ("VCPUS", Align::Right, 5),
            ("SHARED", Align::Right, 10),
        ]);
        for d in &self.domains {
            table.row([
                d.domid.to_string(),
                d.name.clone(),
                d.domain_type.as_str().to_owned(),
                d.state.as_str().to_owned(),
                (d.memory_kib / 1024).to_string(),
                (d.max_memory_kib / 1024).to_string(),
                d.vcpus.to_string(),
                d.shared_pages.to_string(),
            ]);
        }
        let _ = write!(out, "{table}");
        out
    }
}

/// How a [`Table`] column lines its cells up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table: a header line, then one line per row, columns two
/// spaces apart. A column is as wide as its widest cell (header included)
/// and at least its minimum; a left-aligned last column is not padded.
#[derive(Debug, Clone)]
pub struct Table {
    align: Vec<Align>,
    min_width: Vec<usize>,
    /// The header first.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// Columns as (header, alignment, minimum width).
    pub fn new(columns: &[(&str, Align, usize)]) -> Self {
        Self {
            align: columns.iter().map(|c| c.1).collect(),
            min_width: columns.iter().map(|c| c.2).collect(),
            rows: vec![columns.iter().map(|c| c.0.to_owned()).collect()],
        }
    }

    /// One row; cells beyond the header's columns are dropped, missing
    /// ones are empty.
    pub fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let mut cells: Vec<String> = cells.into_iter().take(self.align.len()).collect();
        cells.resize(self.align.len(), String::new());
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<usize> = (0..self.align.len())
            .map(|col| {
                self.rows
                    .iter()
                    .map(|row| row[col].chars().count())
                    .fold(self.min_width[col], usize::max)
            })
            .collect();
        let last = self.align.len().saturating_sub(1);
        for row in &self.rows {
            for (col, cell) in row.iter().enumerate() {
                if col > 0 {
                    f.write_str("  ")?;
                }
                let w = widths[col];
                match self.align[col] {
                    Align::Left if col == last => f.write_str(cell)?,
                    Align::Left => write!(f, "{cell:<w$}")?,
                    Align::Right => write!(f, "{cell:>w$}")?,
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Stock Debian Xen has no `CONFIG_MEM_SHARING`: report no sharing, not an error.
fn zero_if_unsupported(r: Result<u64, HvError>) -> Result<u64, HvError> {
    match r {
        Err(e) if e.kind() == ErrorKind::NotSupported => Ok(0),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeHypervisor, FakeXenStore};
    use crate::{DomId, Gfn, PAGE_SIZE};

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    fn fake_host() -> (FakeHypervisor, FakeXenStore) {
        let hv = FakeHypervisor::new();
        let xs = FakeXenStore::new();
        xs.write(Transaction::NONE, "/local/domain/0/name", b"Domain-0")
            .unwrap();
        hv.add_domain(DomId(3), DomainType::Pvh, 32768);
        for g in 0..10 {
            hv.set_page(DomId(3), Gfn(g), &[0u8; PAGE_SIZE]);
        }
        xs.write(Transaction::NONE, "/local/domain/3/name", b"guest-a")
            .unwrap();
        (hv, xs)
    }

    #[test]
    fn json_schema_is_exactly_what_the_lab_parses() {
        let (hv, xs) = fake_host();
        let report = HostReport::collect(&hv, &xs).unwrap();
        let v = serde_json::to_value(&report).unwrap();

        assert_eq!(keys(&v), ["domains", "xen"]);
        assert_eq!(
            keys(&v["xen"]),
            [
                "capabilities",
                "extra",
                "free_memory_kib",
                "sharing_freed_kib",
                "sharing_used_kib",
                "total_memory_kib",
                "version",
                "virt_caps"
            ]
        );
        assert_eq!(v["xen"]["version"], "4.17.5");
        assert_eq!(
            v["xen"]["virt_caps"],
            serde_json::json!(["pv", "hvm", "hap"])
        );
        assert!(v["xen"]["total_memory_kib"].is_u64());

        let doms = v["domains"].as_array().unwrap();
        assert_eq!(doms.len(), 2);
        for d in doms {
            assert_eq!(
                keys(d),
                [
                    "domid",
                    "max_memory_kib",
                    "memory_kib",
                    "name",
                    "shared_pages",
                    "state",
                    "type",
                    "vcpus"
                ]
            );
        }
        assert_eq!(doms[0]["name"], "Domain-0");
        assert_eq!(doms[0]["type"], "pv");
        assert_eq!(doms[0]["state"], "running");
        assert_eq!(doms[1]["domid"], 3);
        assert_eq!(doms[1]["name"], "guest-a");
        assert_eq!(doms[1]["type"], "pvh");
        assert_eq!(doms[1]["memory_kib"], 40);
        assert_eq!(doms[1]["max_memory_kib"], 131072);
    }

    #[test]
    fn unsupported_sharing_reports_zero_and_missing_name_is_empty() {
        let (hv, xs) = fake_host();
        hv.set_sharing_supported(false);
        xs.rm(Transaction::NONE, "/local/domain/3/name").unwrap();
        let report = HostReport::collect(&hv, &xs).unwrap();
        assert_eq!(report.xen.sharing_freed_kib, 0);
        assert_eq!(report.domains[1].name, "");
    }

    #[test]
    fn table_aligns_columns_to_their_widest_cell() {
        let mut t = Table::new(&[
            ("ID", Align::Right, 5),
            ("NAME", Align::Left, 0),
            ("N", Align::Right, 3),
            ("NOTE", Align::Left, 0),
        ]);
        t.row(["0", "Domain-0", "12", "x"].map(String::from));
        t.row(["17", "g", "1234", "longer note"].map(String::from));
        t.row(["3".to_owned()]);
        let lines = [
            "   ID  NAME         N  NOTE",
            "    0  Domain-0    12  x",
            "   17  g         1234  longer note",
            "    3                  ",
        ];
        assert_eq!(t.to_string(), lines.map(|l| format!("{l}\n")).concat());
    }

    #[test]
    fn table_lists_every_domain() {
        let (hv, xs) = fake_host();
        let table = HostReport::collect(&hv, &xs).unwrap().to_table();
        assert!(table.starts_with("Xen 4.17.5"));
        assert!(table
            .lines()
            .any(|l| l.contains("Domain-0") && l.contains("running")));
        assert!(table
            .lines()
            .any(|l| l.contains("guest-a") && l.contains("pvh")));
    }
}
