//! The outcome of a failed invocation, kept in three kinds because the dispatcher treats them
//! differently: a handler's own error (retry or dead-letter by its case), a trap or limit hit
//! (retry, then dead-letter), and a host failure (retry until the host recovers, never dead-letter).

use std::fmt;

use super::wit::HandlerError;

/// Why an invocation produced no actions.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The handler returned `err(handler-error)`.
    #[error("handler returned {}", describe_handler_error(.0))]
    Handler(HandlerError),
    /// The guest trapped or hit a limit; its Store was dropped.
    #[error("handler trapped ({kind}): {message}")]
    Trap { kind: TrapKind, message: String },
    /// The host could not do its part (a read through an import failed, the instance pool is
    /// exhausted). Says nothing about the event or the handler.
    #[error("host failure: {0:#}")]
    Host(anyhow::Error),
}

/// Which limit or fault ended a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapKind {
    /// The epoch deadline (manifest `timeout-ms`) passed.
    Deadline,
    /// The guest asked for more memory than its manifest's `memory-limit-bytes`.
    MemoryLimit,
    /// The guest panicked or aborted (`unreachable`).
    Panic,
    /// Any other trap: out-of-bounds access, stack overflow, bad conversion...
    Other,
    /// The guest returned a value the component ABI rejects (invalid UTF-8, a bad discriminant,
    /// a pointer out of bounds).
    InvalidValue,
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrapKind::Deadline => "deadline exceeded",
            TrapKind::MemoryLimit => "memory limit",
            TrapKind::Panic => "panic",
            TrapKind::Other => "trap",
            TrapKind::InvalidValue => "invalid return value",
        })
    }
}

/// What the dispatcher does with a failed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Retry with backoff; dead-letter once the attempts run out.
    Retry,
    /// Dead-letter now: retrying cannot help.
    DeadLetter,
    /// Retry with backoff for as long as it takes: the fault is the host's.
    RetryUntilRecovered,
}

impl DispatchError {
    pub fn disposition(&self) -> Disposition {
        match self {
            DispatchError::Handler(HandlerError::InvalidEvent(_) | HandlerError::Reject(_)) => {
                Disposition::DeadLetter
            }
            DispatchError::Handler(HandlerError::RetryLater(_) | HandlerError::Other(_)) => {
                Disposition::Retry
            }
            DispatchError::Trap { .. } => Disposition::Retry,
            DispatchError::Host(_) => Disposition::RetryUntilRecovered,
        }
    }
}

/// `case: message`, the form dead-letter headers and logs use.
pub fn describe_handler_error(e: &HandlerError) -> String {
    match e {
        HandlerError::InvalidEvent(m) => format!("invalid-event: {m}"),
        HandlerError::RetryLater(m) => format!("retry-later: {m}"),
        HandlerError::Reject(m) => format!("reject: {m}"),
        HandlerError::Other(m) => format!("other: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_disposition() {
        let handler = |e| DispatchError::Handler(e).disposition();
        assert_eq!(handler(HandlerError::InvalidEvent("x".into())), Disposition::DeadLetter);
        assert_eq!(handler(HandlerError::Reject("x".into())), Disposition::DeadLetter);
        assert_eq!(handler(HandlerError::RetryLater("x".into())), Disposition::Retry);
        assert_eq!(handler(HandlerError::Other("x".into())), Disposition::Retry);
        let trap = DispatchError::Trap { kind: TrapKind::Deadline, message: String::new() };
        assert_eq!(trap.disposition(), Disposition::Retry);
        let host = DispatchError::Host(anyhow::anyhow!("postgres down"));
        assert_eq!(host.disposition(), Disposition::RetryUntilRecovered);
        assert_eq!(host.to_string(), "host failure: postgres down");
    }
}
