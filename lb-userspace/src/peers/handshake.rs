//! The text handshake that opens every peers session.
//!
//! The connecting side sends three lines:
//!
//! ```text
//! HAProxyS 2.1
//! <name of the peer it calls>
//! <its own name> <pid> <relative pid>
//! ```
//!
//! and the accepting side answers one status line such as `200`. The accepting side checks
//! the lines in the order HAProxy does (its `peer_getline_version`, `_host`, `_last`) and
//! answers the first failure, as soon as the line that fails has arrived (docs/PEERS.md,
//! "Handshake"). Lines end in `\n`, optionally preceded by `\r`.

use std::fmt;

/// The first word of a hello.
pub const PROTOCOL_NAME: &str = "HAProxyS";

/// The longest hello or status line accepted, terminator included. HAProxy accepts up to its
/// buffer size (16 KiB); peer names are short, so a longer line is garbage, not a hello.
pub const MAX_LINE_LEN: usize = 256;

/// A protocol version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    /// What HAProxy 2.6 announces and what we speak: timed updates included.
    pub const V2_1: Self = Self { major: 2, minor: 1 };
    /// The fallback after a 502: no timed updates (0x85/0x86) may be sent to such a peer.
    pub const V2_0: Self = Self { major: 2, minor: 0 };

    /// Whether a peer announcing this version may be accepted: major 2, minor up to ours.
    pub fn is_supported(self) -> bool {
        self.major == Self::V2_1.major && self.minor <= Self::V2_1.minor
    }

    /// Whether timed updates (with an expire) may be sent to a peer speaking this version.
    pub fn has_timed_updates(self) -> bool {
        self >= Self::V2_1
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The status line the accepting side answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: the session is open.
    Success,
    /// 300: the caller is our own local peer (an old process during a reload) and already has
    /// a session; try again later. Deciding this needs session state, so [`accept_hello`]
    /// never returns it: the session layer does.
    TryAgain,
    /// 501: not a hello (bad first word, no space on the third line, unreadable line).
    ProtocolError,
    /// 502: a protocol version we do not speak.
    BadVersion,
    /// 503: the caller asked for a peer name that is not ours.
    BadHost,
    /// 504: the caller's name is not a member of the peers section.
    UnknownPeer,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Self::Success => 200,
            Self::TryAgain => 300,
            Self::ProtocolError => 501,
            Self::BadVersion => 502,
            Self::BadHost => 503,
            Self::UnknownPeer => 504,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        [
            Self::Success,
            Self::TryAgain,
            Self::ProtocolError,
            Self::BadVersion,
            Self::BadHost,
            Self::UnknownPeer,
        ]
        .into_iter()
        .find(|status| status.code() == code)
    }

    /// Appends the status line, e.g. `200\n`.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("{}\n", self.code()).as_bytes());
    }
}

/// A parsed hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: Version,
    /// The peer being called (line 2): the acceptor's own name.
    pub callee: String,
    /// The calling peer's name (first word of line 3).
    pub caller: String,
    /// The caller's process id; HAProxy sends it but nobody checks it.
    pub pid: u32,
    /// The caller's relative process id (always 1 since HAProxy 2.5's single process).
    pub relative_pid: u32,
}

impl Hello {
    /// The hello `caller` sends to `callee`, announcing [`Version::V2_1`].
    pub fn new(callee: impl Into<String>, caller: impl Into<String>, pid: u32) -> Self {
        Self {
            version: Version::V2_1,
            callee: callee.into(),
            caller: caller.into(),
            pid,
            relative_pid: 1,
        }
    }

    /// Appends the three hello lines. Fails for a name the acceptor could not read back.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), HelloError> {
        check_name(&self.callee)?;
        check_name(&self.caller)?;
        let text = format!(
            "{PROTOCOL_NAME} {}\n{}\n{} {} {}\n",
            self.version, self.callee, self.caller, self.pid, self.relative_pid
        );
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// Why a hello is refused (or cannot be built). [`HelloError::status`] is the answer to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("hello line {line} has no end within {MAX_LINE_LEN} bytes")]
    LineTooLong { line: u8 },
    #[error("hello line {line} is not UTF-8 text")]
    NotText { line: u8 },
    #[error("not a peers hello: first line is {found:?}")]
    NotHello { found: String },
    #[error(
        "unsupported peers protocol version {found:?} (we speak {})",
        Version::V2_1
    )]
    BadVersion { found: String },
    #[error("caller asked for peer {found:?} but we are {local:?}")]
    WrongCallee { local: String, found: String },
    #[error("hello third line {found:?} lacks \"<name> <pid> <relative pid>\"")]
    NoCallerPid { found: String },
    #[error("peer {caller:?} is not a member of the peers section")]
    UnknownPeer { caller: String },
    #[error("peer name {name:?} cannot be sent in a hello (empty, too long, or has a space or control byte)")]
    InvalidName { name: String },
}

impl HelloError {
    /// The status line that answers this refusal.
    pub fn status(&self) -> Status {
        match self {
            Self::BadVersion { .. } => Status::BadVersion,
            Self::WrongCallee { .. } => Status::BadHost,
            Self::UnknownPeer { .. } => Status::UnknownPeer,
            Self::LineTooLong { .. }
            | Self::NotText { .. }
            | Self::NotHello { .. }
            | Self::NoCallerPid { .. }
            | Self::InvalidName { .. } => Status::ProtocolError,
        }
    }
}

/// Reads and checks a hello on the accepting side.
///
/// `local_name` is our own peer name; `members` are the names declared in the peers section
/// (ours included, as in HAProxy). Returns `Ok(None)` until the hello is complete, then the
/// hello and the number of bytes it took. Fails as soon as a complete line fails a check,
/// in HAProxy's order: protocol word (501), version (502), callee (503), third line shape (501),
/// membership (504).
pub fn accept_hello<S: AsRef<str>>(
    buf: &[u8],
    local_name: &str,
    members: &[S],
) -> Result<Option<(Hello, usize)>, HelloError> {
    let mut lines = Lines {
        buf,
        pos: 0,
        line: 0,
    };
    let Some(first) = lines.next()? else {
        return Ok(None);
    };
    let version = check_version_line(first)?;
    let Some(second) = lines.next()? else {
        return Ok(None);
    };
    check_callee(second, local_name)?;
    let Some(third) = lines.next()? else {
        return Ok(None);
    };
    let (caller, pid, relative_pid) = check_caller_line(third, members)?;
    let hello = Hello {
        version,
        callee: second.to_owned(),
        caller,
        pid,
        relative_pid,
    };
    Ok(Some((hello, lines.pos)))
}

/// Why a status line is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusLineError {
    #[error("status line has no end within {MAX_LINE_LEN} bytes")]
    TooLong,
    #[error("status line {found:?} is not a number")]
    NotNumber { found: String },
    #[error("unknown peers status code {code}")]
    UnknownCode { code: u16 },
}

/// Reads the status line on the connecting side: `Ok(None)` until it is complete, then the
/// status and the number of bytes it took.
pub fn decode_status(buf: &[u8]) -> Result<Option<(Status, usize)>, StatusLineError> {
    let Some((line, used)) = split_line(buf).map_err(|_| StatusLineError::TooLong)? else {
        return Ok(None);
    };
    let not_number = || StatusLineError::NotNumber {
        found: String::from_utf8_lossy(line).into_owned(),
    };
    if line.is_empty() || !line.iter().all(u8::is_ascii_digit) {
        return Err(not_number());
    }
    let code: u16 = std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(not_number)?;
    let status = Status::from_code(code).ok_or(StatusLineError::UnknownCode { code })?;
    Ok(Some((status, used)))
}

/// Line 1: `HAProxyS <major>.<minor>`.
fn check_version_line(line: &str) -> Result<Version, HelloError> {
    let Some(version) = line
        .strip_prefix(PROTOCOL_NAME)
        .and_then(|rest| rest.strip_prefix(' '))
    else {
        return Err(HelloError::NotHello {
            found: line.to_owned(),
        });
    };
    match parse_version(version) {
        Some(parsed) if parsed.is_supported() => Ok(parsed),
        _ => Err(HelloError::BadVersion {
            found: version.to_owned(),
        }),
    }
}

/// `<digits>.<digits>` and nothing else, as HAProxy's `peer_get_version` requires.
fn parse_version(text: &str) -> Option<Version> {
    let (major, minor) = text.split_once('.')?;
    let number = |part: &str| -> Option<u32> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    Some(Version {
        major: number(major)?,
        minor: number(minor)?,
    })
}

/// Line 2: the name the caller believes it is calling must be ours.
fn check_callee(line: &str, local_name: &str) -> Result<(), HelloError> {
    if line == local_name {
        Ok(())
    } else {
        Err(HelloError::WrongCallee {
            local: local_name.to_owned(),
            found: line.to_owned(),
        })
    }
}

/// Line 3: `<caller> <pid> <relative pid>`. HAProxy only needs the space and ignores the
/// numbers, so unreadable numbers are kept as 0 rather than refused.
fn check_caller_line<S: AsRef<str>>(
    line: &str,
    members: &[S],
) -> Result<(String, u32, u32), HelloError> {
    let Some((caller, rest)) = line.split_once(' ') else {
        return Err(HelloError::NoCallerPid {
            found: line.to_owned(),
        });
    };
    if !members.iter().any(|member| member.as_ref() == caller) {
        return Err(HelloError::UnknownPeer {
            caller: caller.to_owned(),
        });
    }
    let mut numbers = rest.split(' ').map(|word| word.parse().unwrap_or(0));
    let pid = numbers.next().unwrap_or(0);
    let relative_pid = numbers.next().unwrap_or(0);
    Ok((caller.to_owned(), pid, relative_pid))
}

/// A name goes on a line of its own or before a space, so it cannot hold either.
fn check_name(name: &str) -> Result<(), HelloError> {
    let usable = !name.is_empty()
        && name.len() < MAX_LINE_LEN - 32
        && !name.bytes().any(|b| b == b' ' || b.is_ascii_control());
    if usable {
        Ok(())
    } else {
        Err(HelloError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Successive complete lines of a hello.
struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
    line: u8,
}

impl<'a> Lines<'a> {
    /// The next complete line as text, or `None` if it has not fully arrived.
    fn next(&mut self) -> Result<Option<&'a str>, HelloError> {
        self.line += 1;
        let line = self.line;
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some((bytes, used)) = split_line(rest).map_err(|_| HelloError::LineTooLong { line })?
        else {
            return Ok(None);
        };
        let text = std::str::from_utf8(bytes).map_err(|_| HelloError::NotText { line })?;
        self.pos += used;
        Ok(Some(text))
    }
}

/// The line was not terminated within [`MAX_LINE_LEN`] bytes.
struct LineTooLong;

/// Splits off one line: its content without `\r\n` or `\n`, and the bytes it used.
fn split_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, LineTooLong> {
    let window = &buf[..buf.len().min(MAX_LINE_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE_LEN {
            Err(LineTooLong)
        } else {
            Ok(None)
        };
    };
    let content = &window[..end];
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    Ok(Some((content, end + 1)))
}

#[cfg(test)]
mod tests;
