//! Plain data types shared by the SDK's safe API.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A UUID as 16 raw bytes in RFC 4122 (big-endian, "network") order — the
/// same bytes as Python's `uuid.UUID(...).bytes`. This is what the ABI passes
/// by pointer for job and library ids.
///
/// Parses from and serializes to the canonical hyphenated lowercase string
/// (`"6f1c3e2a-…"`); parsing also accepts upper case, missing hyphens, and
/// `{…}` / `urn:uuid:` wrappers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// The all-zero UUID.
    pub const NIL: Uuid = Uuid([0; 16]);

    /// Builds a UUID from its 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Uuid(bytes)
    }

    /// The 16 raw bytes (RFC 4122 order).
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses a UUID string (see the type docs for accepted forms).
    pub fn parse(s: &str) -> Result<Self, UuidParseError> {
        let mut t = s.trim();
        if let Some(rest) = t.strip_prefix("urn:uuid:") {
            t = rest;
        }
        if t.starts_with('{') && t.ends_with('}') && t.len() >= 2 {
            t = &t[1..t.len() - 1];
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for c in t.bytes() {
            if c == b'-' {
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(UuidParseError(s.to_string())),
            };
            if nibbles >= 32 {
                return Err(UuidParseError(s.to_string()));
            }
            out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
            nibbles += 1;
        }
        if nibbles != 32 {
            return Err(UuidParseError(s.to_string()));
        }
        Ok(Uuid(out))
    }
}

impl From<[u8; 16]> for Uuid {
    fn from(bytes: [u8; 16]) -> Self {
        Uuid(bytes)
    }
}

impl FromStr for Uuid {
    type Err = UuidParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse(s)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 36];
        let mut j = 0;
        for (i, b) in self.0.iter().enumerate() {
            if i == 4 || i == 6 || i == 8 || i == 10 {
                buf[j] = b'-';
                j += 1;
            }
            buf[j] = HEX[(b >> 4) as usize];
            buf[j + 1] = HEX[(b & 0x0f) as usize];
            j += 2;
        }
        // Only ASCII hex digits and '-' were written.
        f.write_str(std::str::from_utf8(&buf).unwrap_or(""))
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uuid({})", self)
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Uuid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a UUID string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Uuid, E> {
                Uuid::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Error returned when a string is not a UUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UuidParseError(pub String);

impl fmt::Display for UuidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid UUID: {:?}", self.0)
    }
}

impl std::error::Error for UuidParseError {}

/// Log levels of `spacedrive_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum LogLevel {
    /// 0
    Debug = 0,
    /// 1
    Info = 1,
    /// 2
    Warn = 2,
    /// 3
    Error = 3,
}

/// Answer of `job_check_interrupt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// 0: keep going.
    Continue,
    /// 1: the host asked the job to pause (it will be resumed later).
    Pause,
    /// 2 (and any unknown non-zero value): the host asked the job to stop.
    Cancel,
}

impl Interrupt {
    /// Maps the raw host answer. Unknown non-zero values are treated as
    /// [`Interrupt::Cancel`] (the conservative choice).
    pub fn from_code(code: i32) -> Self {
        match code {
            0 => Interrupt::Continue,
            1 => Interrupt::Pause,
            _ => Interrupt::Cancel,
        }
    }

    /// `true` for [`Interrupt::Pause`] and [`Interrupt::Cancel`].
    pub fn should_stop(self) -> bool {
        self != Interrupt::Continue
    }
}

/// What a job handler returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobResult {
    /// Done. The SDK checkpoints the final state (which the host takes as
    /// the job's output) and returns 0.
    Completed,
    /// Stopped because `check_interrupt` asked for pause or cancel. The SDK
    /// checkpoints the current state and returns 1.
    Interrupted,
    /// Failed. The SDK logs the message at error level and returns 2.
    Failed(String),
}

impl JobResult {
    /// Shorthand for `JobResult::Failed(msg.to_string())`.
    pub fn failed(msg: impl fmt::Display) -> Self {
        JobResult::Failed(msg.to_string())
    }
}

impl<E: fmt::Display> From<Result<(), E>> for JobResult {
    /// `Ok(())` → `Completed`, `Err(e)` → `Failed(e.to_string())`.
    fn from(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => JobResult::Completed,
            Err(e) => JobResult::Failed(e.to_string()),
        }
    }
}

/// Error of [`crate::call`].
#[derive(Clone, Debug, PartialEq)]
pub enum CallError {
    /// The host answered `{"error": {"code": .., "message": ..}}`.
    Host {
        /// Host error code.
        code: i64,
        /// Host error message.
        message: String,
    },
    /// The payload could not be serialized to JSON.
    Serialize(String),
    /// The `ok` result did not match the requested result type.
    Deserialize(String),
    /// `spacedrive_call` returned 0 (the reply could not be allocated).
    NoReply,
    /// The reply buffer was not a valid envelope.
    Protocol(String),
}

impl CallError {
    /// The host error code, if this is a host error.
    pub fn code(&self) -> Option<i64> {
        match self {
            CallError::Host { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Host { code, message } => write!(f, "host error {}: {}", code, message),
            CallError::Serialize(m) => write!(f, "cannot serialize payload: {}", m),
            CallError::Deserialize(m) => write!(f, "unexpected result shape: {}", m),
            CallError::NoReply => f.write_str("host could not allocate the reply"),
            CallError::Protocol(m) => write!(f, "malformed reply: {}", m),
        }
    }
}

impl std::error::Error for CallError {}

/// Error of [`crate::JobContext::checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointError {
    /// The state could not be serialized to JSON.
    Serialize(String),
    /// `job_checkpoint` returned this non-zero code (state not saved).
    Host(i32),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Serialize(m) => write!(f, "cannot serialize state: {}", m),
            CheckpointError::Host(code) => write!(f, "host refused checkpoint (code {})", code),
        }
    }
}

impl std::error::Error for CheckpointError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_roundtrip() {
        let s = "6f1c3e2a-09ab-4cde-8f01-23456789abcd";
        let u = Uuid::parse(s).unwrap();
        assert_eq!(u.0[0], 0x6f);
        assert_eq!(u.0[15], 0xcd);
        assert_eq!(u.to_string(), s);
        assert_eq!(Uuid::parse("6F1C3E2A09AB4CDE8F0123456789ABCD").unwrap(), u);
        assert_eq!(Uuid::parse("{6f1c3e2a-09ab-4cde-8f01-23456789abcd}").unwrap(), u);
        assert_eq!(Uuid::parse("urn:uuid:6f1c3e2a-09ab-4cde-8f01-23456789abcd").unwrap(), u);
        assert!(Uuid::parse("6f1c3e2a").is_err());
        assert!(Uuid::parse("6f1c3e2a-09ab-4cde-8f01-23456789abcdff").is_err());
        assert!(Uuid::parse("zz1c3e2a-09ab-4cde-8f01-23456789abcd").is_err());
        let j = serde_json::to_string(&u).unwrap();
        assert_eq!(j, format!("\"{}\"", s));
        assert_eq!(serde_json::from_str::<Uuid>(&j).unwrap(), u);
    }

    #[test]
    fn interrupt_codes() {
        assert_eq!(Interrupt::from_code(0), Interrupt::Continue);
        assert_eq!(Interrupt::from_code(1), Interrupt::Pause);
        assert_eq!(Interrupt::from_code(2), Interrupt::Cancel);
        assert_eq!(Interrupt::from_code(7), Interrupt::Cancel);
    }
}
