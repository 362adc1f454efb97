use std::path::PathBuf;

/// Why the lab could not build or run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot read lab config {path}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid lab config {path}")]
    ConfigParse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{command}` could not be started (is it installed? .ci/run installs the lab's tools)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr_tail}")]
    CommandFailed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("package {package} has no version in suite {suite} (run `apt-get update`?)")]
    PackageNotFound { package: String, suite: String },
    #[error("{what} not found in {path}")]
    MissingArtifact { what: String, path: PathBuf },
    #[error("{path}: {why}")]
    BadBinary { path: PathBuf, why: String },
    #[error("scenario {path}: {why}")]
    BadScenario { path: PathBuf, why: String },
    #[error("unknown scenario `{name}`: no {path}")]
    UnknownScenario { name: String, path: PathBuf },
    #[error("unknown suite `{name}` (lab.toml has: {known})")]
    UnknownSuite { name: String, known: String },
    #[error("suite `{suite}` of lab.toml: {why}")]
    BadSuite { suite: String, why: String },
    #[error("suite `{suite}` has no scenario named {names} (it has: {known})")]
    NotInSuite {
        suite: String,
        names: String,
        known: String,
    },
    #[error("scenario `{scenario}` failed: {reason}")]
    ScenarioFailed { scenario: String, reason: String },
}

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LabError::Io { path, source }
    }
}
