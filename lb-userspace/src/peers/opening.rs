//! Opening a session, as two small state machines without I/O (docs/PEERS.md, "Handshake"):
//! [`Dial`] sends our hello and awaits the status line; [`Answer`] awaits a peer's hello and
//! says which status to answer. Both buffer what they are fed; neither needs more than three
//! lines of [`MAX_LINE_LEN`] bytes, since a longer line is refused as soon as it is seen.

use super::handshake::{
    accept_hello, decode_status, Hello, HelloError, Status, StatusLineError, Version, MAX_LINE_LEN,
};

/// A session past the handshake, as far as the protocol goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// What the peer speaks: whether it takes timed updates.
    pub version: Version,
    /// Bytes received past the handshake: the first messages, if the peer was quick.
    pub leftover: Vec<u8>,
}

/// Why our hello did not open a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("unreadable answer to our hello")]
    StatusLine(#[from] StatusLineError),
    #[error("peer refused us with {}", .0.code())]
    Refused(Status),
}

/// The dialling side: our hello is sent, the peer's status line awaited.
#[derive(Debug)]
pub struct Dial {
    buf: Vec<u8>,
}

impl Dial {
    /// Starts calling peer `callee` as `caller`: the machine, and the hello to send.
    pub fn start(callee: &str, caller: &str, pid: u32) -> Result<(Self, Vec<u8>), HelloError> {
        let mut hello = Vec::new();
        Hello::new(callee, caller, pid).encode(&mut hello)?;
        let dial = Self {
            buf: Vec::with_capacity(MAX_LINE_LEN),
        };
        Ok((dial, hello))
    }

    /// Bytes of the peer's answer: `None` until the status line is complete, then the open
    /// session (we announced [`Version::V2_1`] and the peer took it) or why not.
    pub fn received(&mut self, bytes: &[u8]) -> Result<Option<Open>, DialError> {
        self.buf.extend_from_slice(bytes);
        let Some((status, used)) = decode_status(&self.buf)? else {
            return Ok(None);
        };
        match status {
            Status::Success => Ok(Some(Open {
                version: Version::V2_1,
                leftover: self.buf.split_off(used),
            })),
            refused => Err(DialError::Refused(refused)),
        }
    }
}

/// What to answer a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// Send `reply` (`200`): the session with `hello.caller` is open.
    Accepted {
        reply: Vec<u8>,
        hello: Hello,
        open: Open,
    },
    /// Send `reply`, then close.
    Refused { reply: Vec<u8>, why: Refusal },
}

/// Why a hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad hello")]
    BadHello(#[source] HelloError),
    /// Our own name calling is an older process of ours (a reload): HAProxy's answer to that
    /// is "try again later" (300).
    #[error("the caller has our own name")]
    OurOwnName,
}

impl Refusal {
    pub fn status(&self) -> Status {
        match self {
            Self::BadHello(error) => error.status(),
            Self::OurOwnName => Status::TryAgain,
        }
    }
}

/// The accepting side: a peer's hello awaited. `members` are every name of the peers
/// section, ours included.
#[derive(Debug)]
pub struct Answer<'a> {
    local_name: &'a str,
    members: &'a [String],
    buf: Vec<u8>,
}

impl<'a> Answer<'a> {
    pub fn new(local_name: &'a str, members: &'a [String]) -> Self {
        Self {
            local_name,
            members,
            buf: Vec::with_capacity(MAX_LINE_LEN),
        }
    }

    /// Bytes of the hello: `None` until it is complete or a line of it fails a check, then
    /// what to answer.
    pub fn received(&mut self, bytes: &[u8]) -> Option<Answered> {
        self.buf.extend_from_slice(bytes);
        let (hello, used) = match accept_hello(&self.buf, self.local_name, self.members) {
            Ok(None) => return None,
            Ok(Some(accepted)) => accepted,
            Err(error) => return Some(refuse(Refusal::BadHello(error))),
        };
        if hello.caller == self.local_name {
            return Some(refuse(Refusal::OurOwnName));
        }
        let mut reply = Vec::new();
        Status::Success.encode(&mut reply);
        Some(Answered::Accepted {
            reply,
            open: Open {
                version: hello.version,
                leftover: self.buf.split_off(used),
            },
            hello,
        })
    }
}

fn refuse(why: Refusal) -> Answered {
    let mut reply = Vec::new();
    why.status().encode(&mut reply);
    Answered::Refused { reply, why }
}

#[cfg(test)]
mod tests {
    use super::{
        super::transcript::{Side, Transcript},
        *,
    };

    fn members() -> [String; 2] {
        ["hap", "us"].map(String::from)
    }

    #[test]
    fn a_hello_is_answered_in_pieces_and_refused_for_our_own_name_or_another_callee() {
        let members = members();
        let hello = Transcript::load("haproxy-dials-us").next(Side::Haproxy);
        let mut answer = Answer::new("us", &members);
        let (head, tail) = hello.split_at(5);
        assert_eq!(answer.received(head), None);
        assert!(matches!(
            answer.received(&[tail, b"\x00\x00"].concat()),
            Some(Answered::Accepted { open, .. }) if open.leftover == [0, 0]
        ));
        let Some(Answered::Refused { reply, why }) = Answer::new("hap", &members).received(&hello)
        else {
            panic!("a hello for \"us\" accepted by \"hap\"");
        };
        assert!(matches!(why, Refusal::BadHello(_)), "{why:?}");
        assert_eq!(reply, b"503\n");
        let ourselves = b"HAProxyS 2.1\nus\nus 1 1\n";
        let Some(Answered::Refused { reply, why }) =
            Answer::new("us", &members).received(ourselves)
        else {
            panic!("our own name accepted");
        };
        assert_eq!(
            (why, reply.as_slice()),
            (Refusal::OurOwnName, &b"300\n"[..])
        );
    }

    #[test]
    fn a_refusal_ends_a_dial() {
        let (mut dial, _) = Dial::start("hap", "us", 1).unwrap();
        assert_eq!(dial.received(b"50"), Ok(None));
        assert!(matches!(dial.received(b"4\n"), Err(DialError::Refused(_))));
    }
}
