//! Are we in a Xen control domain? Checked before opening libxenctrl so that
//! running the tools elsewhere gives one clear sentence, not a library's
//! stderr noise.

use std::path::Path;

use circ_hv::HvError;

const CAPABILITIES: &str = "/proc/xen/capabilities";

/// Why a handle could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Not a Xen dom0 (or no privilege to act as one). Tools exit with a
    /// distinct code for this.
    #[error("not running in a Xen dom0: {0}")]
    NotDom0(String),
    #[error(transparent)]
    Library(#[from] HvError),
}

/// Ok if `/proc/xen/capabilities` exists and lists `control_d`.
pub fn check_dom0() -> Result<(), OpenError> {
    check_capabilities(Path::new(CAPABILITIES))
}

fn check_capabilities(path: &Path) -> Result<(), OpenError> {
    let caps = match std::fs::read_to_string(path) {
        Ok(caps) => caps,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::NotDom0(format!(
                "{} not found (is xenfs mounted?)",
                path.display()
            )))
        }
        Err(e) => {
            return Err(OpenError::NotDom0(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    if caps
        .split(|c: char| c == ',' || c.is_whitespace())
        .any(|cap| cap == "control_d")
    {
        Ok(())
    } else {
        Err(OpenError::NotDom0(format!(
            "{} lacks control_d (is this a domU?)",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(contents: Option<&str>) -> Result<(), OpenError> {
        let dir = std::env::temp_dir().join(format!(
            "circ-xen-dom0-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("capabilities");
        let _ = std::fs::remove_file(&path);
        if let Some(c) = contents {
            std::fs::write(&path, c).unwrap();
        }
        let r = check_capabilities(&path);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn control_d_means_dom0() {
        check(Some("control_d\n")).unwrap();
    }

    #[test]
    fn domu_and_missing_file_are_not_dom0() {
        let err = check(Some("\n")).unwrap_err();
        assert!(matches!(err, OpenError::NotDom0(_)));
        assert!(err.to_string().contains("lacks control_d"), "{err}");

        let err = check(None).unwrap_err();
        assert!(
            err.to_string().starts_with("not running in a Xen dom0: "),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("capabilities not found (is xenfs mounted?)"),
            "{err}"
        );
    }
}
