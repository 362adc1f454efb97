//! The subset of xl's domain configuration syntax that decides what a domain
//! boots, and the measurement plan derived from it.
//!
//! Recognised (everything else is parsed and ignored, like xl ignores keys it
//! does not know): `name`, `kernel`, `ramdisk`, `bootloader`, `disk`, and
//! Circular's own `circ_index` (a string or list of local index paths).
//!
//! A `disk` entry with `script=block-circ` is a cas-blk disk: its `target`
//! (an index URL or path) is what `block-circ` will serve, so the plan names
//! it as a [`ServedDisk`], to be measured as the index bytes cas-blk accepts.
//! Otherwise a disk names a local cas-blk index by a `circ-index=PATH` item,
//! or by a `target=` ending in `.cidx` (cas-blk's name) or `.idx`; an
//! `http(s)://` target of that kind is refused, since nothing would serve it
//! as a cas-blk disk. Relative paths are resolved against the current
//! directory, as xl resolves them.
//!
//! Syntax (xl.cfg(5)): `KEY = VALUE` statements ended by a newline or `;`;
//! values are `"strings"` / `'strings'`, bare numbers, or `[lists]` of those
//! (which may span lines); `#` starts a comment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Bare(String),
    List(Vec<Value>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XlError {
    #[error("line {line}: {msg}")]
    Syntax { line: usize, msg: String },
    #[error("the configuration has no `name`")]
    NoName,
    #[error("`{key}` must be a string")]
    NotAString { key: &'static str },
    #[error("disk {index} names the cas-blk index {url} by URL but is not served by block-circ; add `script=block-circ` to the disk entry")]
    RemoteIndex { index: usize, url: String },
    #[error("disk {index} is served by block-circ but has no `target=`")]
    NoTarget { index: usize },
}

/// A disk the `block-circ` hotplug script serves from a cas-blk index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedDisk {
    /// Its position in the `disk` list.
    pub index: usize,
    /// The disk's `target`, as libxl hands it to the hotplug script
    /// (`params` in xenstore): an index URL or path.
    pub target: String,
}

/// What `circ measure domain` measures, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPlan {
    pub name: String,
    pub kernel: Option<PathBuf>,
    pub ramdisk: Option<PathBuf>,
    pub cas_indexes: Vec<PathBuf>,
    /// Disks `block-circ` serves; measured after the local indexes.
    pub served_disks: Vec<ServedDisk>,
    /// The guest picks its own kernel (`bootloader`, or HVM firmware): only the
    /// configuration and disks' indexes can be measured from dom0.
    pub guest_chooses_kernel: bool,
}

/// Parses a configuration into `key -> value` (last assignment wins, like xl).
pub fn parse(text: &str) -> Result<BTreeMap<String, Value>, XlError> {
    let mut lexer = Lexer {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut out = BTreeMap::new();
    loop {
        lexer.skip_blank(true);
        let Some(c) = lexer.peek() else { break };
        if c == ';' {
            lexer.pos += 1;
            continue;
        }
        let key = lexer.ident()?;
        lexer.skip_blank(false);
        lexer.expect('=')?;
        lexer.skip_blank(false);
        let value = lexer.value(0)?;
        lexer.skip_blank(false);
        match lexer.peek() {
            None | Some('\n') | Some(';') => {}
            Some(c) => {
                return Err(lexer.error(format!("unexpected `{c}` after the value of {key}")))
            }
        }
        out.insert(key, value);
    }
    Ok(out)
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn error(&self, msg: String) -> XlError {
        XlError::Syntax {
            line: self.line,
            msg,
        }
    }

    /// Skips spaces and comments, and newlines too when `newlines`.
    fn skip_blank(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\r' => {
                    self.bump();
                }
                '\n' if newlines => {
                    self.bump();
                }
                '#' => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                _ => break,
            }
        }
    }

    fn expect(&mut self, want: char) -> Result<(), XlError> {
        match self.bump() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(self.error(format!("expected `{want}`, found `{c}`"))),
            None => Err(self.error(format!("expected `{want}`, found the end"))),
        }
    }

    fn ident(&mut self) -> Result<String, XlError> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.bump();
        }
        if self.pos == start {
            let c = self.peek().unwrap_or(' ');
            return Err(self.error(format!("expected a setting name, found `{c}`")));
        }
        Ok(self
            .chars
            .get(start..self.pos)
            .unwrap_or_default()
            .iter()
            .collect())
    }

    fn value(&mut self, depth: usize) -> Result<Value, XlError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let mut s = String::new();
                loop {
                    // Strings do not span lines; report the line they started on.
                    if self.peek() == Some('\n') {
                        return Err(self.error("unterminated string".into()));
                    }
                    match self.bump() {
                        None | Some('\n') => return Err(self.error("unterminated string".into())),
                        Some('\\') if q == '"' => match self.bump() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c) => s.push(c),
                            None => return Err(self.error("unterminated string".into())),
                        },
                        Some(c) if c == q => return Ok(Value::Str(s)),
                        Some(c) => s.push(c),
                    }
                }
            }
            // Nesting is not part of xl's grammar; the bound keeps recursion finite.
            Some('[') if depth == 0 => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_blank(true);
                    if self.peek() == Some(']') {
                        self.bump();
                        return Ok(Value::List(items));
                    }
                    items.push(self.value(depth + 1)?);
                    self.skip_blank(true);
                    match self.bump() {
                        Some(',') => {}
                        Some(']') => return Ok(Value::List(items)),
                        Some(c) => {
                            return Err(self.error(format!("expected `,` or `]`, found `{c}`")))
                        }
                        None => return Err(self.error("unterminated list".into())),
                    }
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.') => {
                let start = self.pos;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_')
                }) {
                    self.bump();
                }
                Ok(Value::Bare(
                    self.chars
                        .get(start..self.pos)
                        .unwrap_or_default()
                        .iter()
                        .collect(),
                ))
            }
            Some(c) => Err(self.error(format!("unexpected `{c}` where a value was expected"))),
            None => Err(self.error("missing value".into())),
        }
    }
}

fn string(cfg: &BTreeMap<String, Value>, key: &'static str) -> Result<Option<String>, XlError> {
    match cfg.get(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.clone())),
        Some(_) => Err(XlError::NotAString { key }),
    }
}

fn strings(v: Option<&Value>, key: &'static str) -> Result<Vec<String>, XlError> {
    match v {
        None => Ok(Vec::new()),
        Some(Value::Str(s)) => Ok(vec![s.clone()]),
        Some(Value::List(items)) => items
            .iter()
            .map(|i| match i {
                Value::Str(s) => Ok(s.clone()),
                _ => Err(XlError::NotAString { key }),
            })
            .collect(),
        Some(Value::Bare(_)) => Err(XlError::NotAString { key }),
    }
}

/// What a disk spec asks us to measure.
#[derive(Debug, PartialEq, Eq)]
enum DiskIndex {
    Local(PathBuf),
    Served(String),
}

/// The cas-blk index a disk spec names, if any.
fn disk_index(index: usize, spec: &str) -> Result<Option<DiskIndex>, XlError> {
    // `target=` swallows the rest of the spec (it may contain commas), as in xl.
    let (items, target) = match spec.split_once("target=") {
        Some((head, target)) => (head, Some(target.trim())),
        None => (spec, None),
    };
    let items: Vec<&str> = items.split(',').map(str::trim).collect();
    // `script=` is a name in /etc/xen/scripts or a path.
    let served = items.iter().any(|item| {
        item.strip_prefix("script=")
            .is_some_and(|s| s.rsplit('/').next() == Some("block-circ"))
    });
    if served {
        return match target {
            Some(t) if !t.is_empty() => Ok(Some(DiskIndex::Served(t.to_owned()))),
            _ => Err(XlError::NoTarget { index }),
        };
    }
    if let Some(path) = items.iter().find_map(|i| i.strip_prefix("circ-index=")) {
        return Ok(Some(DiskIndex::Local(PathBuf::from(path))));
    }
    match target {
        Some(t) if t.ends_with(".idx") || t.ends_with(".cidx") => {
            if t.starts_with("http://") || t.starts_with("https://") {
                Err(XlError::RemoteIndex {
                    index,
                    url: t.to_owned(),
                })
            } else {
                Ok(Some(DiskIndex::Local(PathBuf::from(t))))
            }
        }
        _ => Ok(None),
    }
}

/// Derives the measurement plan from a configuration's text.
pub fn plan(text: &str) -> Result<DomainPlan, XlError> {
    let cfg = parse(text)?;
    let name = string(&cfg, "name")?.ok_or(XlError::NoName)?;
    let kernel = string(&cfg, "kernel")?.map(PathBuf::from);
    let ramdisk = string(&cfg, "ramdisk")?.map(PathBuf::from);
    let bootloader = string(&cfg, "bootloader")?;
    let mut cas_indexes = Vec::new();
    let mut served_disks = Vec::new();
    for (i, spec) in strings(cfg.get("disk"), "disk")?.iter().enumerate() {
        match disk_index(i, spec)? {
            Some(DiskIndex::Local(p)) => cas_indexes.push(p),
            Some(DiskIndex::Served(target)) => served_disks.push(ServedDisk { index: i, target }),
            None => {}
        }
    }
    for p in strings(cfg.get("circ_index"), "circ_index")? {
        cas_indexes.push(PathBuf::from(p));
    }
    Ok(DomainPlan {
        name,
        guest_chooses_kernel: kernel.is_none() || bootloader.is_some(),
        kernel,
        ramdisk,
        cas_indexes,
        served_disks,
    })
}

/// Resolves a path from a configuration the way xl would open it.
pub fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
# a PVH guest
name = "web1"
type = "pvh"; memory = 128
kernel = "/var/lib/xen/web1/vmlinuz"
ramdisk = '/var/lib/xen/web1/initrd.img'   # comment
extra = "console=hvc0 \"quoted\""
disk = [ 'format=raw, vdev=xvda, access=rw, target=/dev/nbd0',
         "vdev=xvdb, circ-index=/var/lib/circular/idx/data.idx, target=/dev/nbd1",
         'vdev=xvdc, target=/srv/images/root.idx',
       ]
vif = []
circ_index = "/srv/extra.idx"
"#;

    #[test]
    fn plan_names_kernel_ramdisk_and_indexes() {
        let p = plan(CFG).unwrap();
        assert_eq!(p.name, "web1");
        assert_eq!(
            p.kernel.as_deref(),
            Some(Path::new("/var/lib/xen/web1/vmlinuz"))
        );
        assert_eq!(
            p.ramdisk.as_deref(),
            Some(Path::new("/var/lib/xen/web1/initrd.img"))
        );
        assert_eq!(
            p.cas_indexes,
            vec![
                PathBuf::from("/var/lib/circular/idx/data.idx"),
                PathBuf::from("/srv/images/root.idx"),
                PathBuf::from("/srv/extra.idx"),
            ]
        );
        assert!(!p.guest_chooses_kernel);
        let cfg = parse(CFG).unwrap();
        assert_eq!(cfg.get("memory"), Some(&Value::Bare("128".into())));
        assert_eq!(
            cfg.get("extra"),
            Some(&Value::Str("console=hvc0 \"quoted\"".into()))
        );
    }

    #[test]
    fn remote_index_and_bad_syntax_are_clear_errors() {
        let err = plan("name='a'\ndisk=['vdev=xvda, target=http://mirror/a.idx']\n").unwrap_err();
        assert!(
            matches!(err, XlError::RemoteIndex { index: 0, .. }),
            "{err}"
        );
        assert_eq!(
            plan("name = 'a'\nkernel = \"/k\n").unwrap_err(),
            XlError::Syntax {
                line: 2,
                msg: "unterminated string".into()
            }
        );
        assert_eq!(plan("memory = 1\n"), Err(XlError::NoName));
        assert!(plan("name = [[ 'a' ]]").is_err());
        assert!(plan("name = 'a' 'b'").is_err());
    }

    #[test]
    fn block_circ_disks_are_served_disks_whatever_their_target() {
        let p = plan(
            "name = 'c'\n\
             disk = [ 'vdev=xvda, access=ro, script=block-circ, target=http://h:8080/indexes/img.cidx',\n\
                      'vdev=xvdb, script=/etc/xen/scripts/block-circ, target=/srv/store/indexes/b.cidx',\n\
                      'vdev=xvdc, target=/srv/local.cidx',\n\
                      'vdev=xvdd, script=block, target=/dev/sdb' ]\n",
        )
        .unwrap();
        assert_eq!(
            p.served_disks,
            vec![
                ServedDisk {
                    index: 0,
                    target: "http://h:8080/indexes/img.cidx".into()
                },
                ServedDisk {
                    index: 1,
                    target: "/srv/store/indexes/b.cidx".into()
                },
            ]
        );
        assert_eq!(p.cas_indexes, vec![PathBuf::from("/srv/local.cidx")]);
    }

    #[test]
    fn a_cidx_url_not_served_by_block_circ_is_refused() {
        // Before block-circ disks were recognised, this disk was silently
        // left unmeasured (cas-blk names indexes `.cidx`, not `.idx`).
        let err =
            plan("name='a'\ndisk=['vdev=xvda, target=http://h/indexes/img.cidx']\n").unwrap_err();
        assert!(
            matches!(err, XlError::RemoteIndex { index: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("script=block-circ"), "{err}");
        assert_eq!(
            plan("name='a'\ndisk=['vdev=xvda, script=block-circ']\n"),
            Err(XlError::NoTarget { index: 0 })
        );
        assert_eq!(
            plan("name='a'\ndisk=['vdev=xvda, script=block-circ, target=']\n"),
            Err(XlError::NoTarget { index: 0 })
        );
    }

    #[test]
    fn hvm_without_kernel_lets_the_guest_choose() {
        let p = plan("name = \"h\"\ntype = \"hvm\"\n").unwrap();
        assert!(p.guest_chooses_kernel);
        assert!(p.kernel.is_none());
    }
}
