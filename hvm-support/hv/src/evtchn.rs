//! The [`EventChannel`] trait: interdomain event channels, the doorbells of
//! shared rings.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{DomId, HvError};

/// A local event-channel port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EvtchnPort(pub u32);

impl fmt::Display for EvtchnPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One handle on the event channels (libxenevtchn over /dev/xen/evtchn).
/// Ports bound through a handle belong to it and are unbound when it
/// closes.
pub trait EventChannel {
    /// Allocate a port that `remote` can bind to.
    fn bind_unbound_port(&self, remote: DomId) -> Result<EvtchnPort, HvError>;

    /// Connect to `remote_port` of `remote`, which must be an unbound port
    /// allocated for us.
    fn bind_interdomain(
        &self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, HvError>;

    fn unbind(&self, port: EvtchnPort) -> Result<(), HvError>;

    /// Signal the other end of `port`.
    fn notify(&self, port: EvtchnPort) -> Result<(), HvError>;

    /// The next port that fired, waiting at most `timeout` (zero: only
    /// look); `None` if none did. A port that fired stays masked, its
    /// further events held, until [`unmask`](Self::unmask).
    fn pending(&self, timeout: Duration) -> Result<Option<EvtchnPort>, HvError>;

    fn unmask(&self, port: EvtchnPort) -> Result<(), HvError>;
}
