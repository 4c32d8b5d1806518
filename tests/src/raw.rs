//! Raw sockets for abuse tests: bytes written as given (no client library to tidy them up),
//! answers read until the peer closes or a deadline passes, and just enough HTTP/2 framing
//! (frames, a few HPACK literals) to send what a well-behaved client never would.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What came back on a raw connection.
#[derive(Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) before the deadline.
    pub closed: bool,
}

impl Reply {
    /// Status codes of every HTTP/1.x status line in the reply, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.")
            .filter_map(|(i, _)| {
                let line = &text[i..];
                let code = line.get(9..12)?;
                (line.as_bytes().get(8) == Some(&b' '))
                    .then(|| code.parse().ok())
                    .flatten()
            })
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Connect, write `request`, and read until the peer closes or `wait` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Reply {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // A write may fail once the server has answered and closed: that is an answer too.
    let _ = s.write_all(request).await;
    read_until_closed(&mut s, wait).await
}

/// Read from `s` until EOF, a reset, or `wait` passes.
pub async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> Reply {
    read_until(s, wait, |_| false).await
}

/// Read from `s` until EOF, a reset, `wait` passes, or what was read satisfies `done`.
pub async fn read_until(s: &mut TcpStream, wait: Duration, done: impl Fn(&[u8]) -> bool) -> Reply {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return Reply {
                    bytes,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Reply {
                    bytes,
                    closed: true,
                };
            }
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                // Bound what a misbehaving server could make us hold.
                if done(&bytes) || bytes.len() > 16 << 20 {
                    return Reply {
                        bytes,
                        closed: false,
                    };
                }
            }
        }
    }
}

/// Whether the peer closes `s` within `wait`, ignoring whatever it sends first.
pub async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    read_until_closed(s, wait).await.closed
}

// --- HTTP/2 ---------------------------------------------------------------------------------

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;
/// RST_STREAM / GOAWAY error codes.
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame fits");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK: a literal header without indexing, with a literal name (no Huffman).
pub fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_string(&mut out, name.as_bytes());
    hpack_string(&mut out, value.as_bytes());
    out
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    // 7-bit prefix integer, H bit clear.
    let mut n = s.len();
    if n < 127 {
        out.push(u8::try_from(n).expect("small"));
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push(u8::try_from(n % 128).expect("7 bits") | 0x80);
            n /= 128;
        }
        out.push(u8::try_from(n).expect("7 bits"));
    }
    out.extend_from_slice(s);
}

/// HPACK header block of `GET path` on `authority` over http.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    // :method GET (static 2), :scheme http (static 6).
    let mut out = vec![0x82, 0x86];
    out.extend(hpack_literal(":path", path));
    out.extend(hpack_literal(":authority", authority));
    out
}

/// The client's connection start: preface and an empty SETTINGS.
pub fn h2_start() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out
}

/// Frames parsed from a byte stream: (type, flags, stream, payload); a partial frame at the
/// end is left out.
pub fn parse_frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// The error code of the first GOAWAY among `frames`.
pub fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(t, ..)| *t == GOAWAY)
        .and_then(|(_, _, _, p)| p.get(4..8))
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// Read from `s` until a frame satisfying `done` arrived, the peer closed, or `wait`
/// passed; returns every frame read (the server's stream starts with its SETTINGS).
pub async fn read_frames_until(
    s: &mut TcpStream,
    wait: Duration,
    done: impl Fn(&(u8, u8, u32, Vec<u8>)) -> bool,
) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let frames = parse_frames(&bytes);
        if frames.iter().any(&done) {
            return (frames, false);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (frames, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (parse_frames(&bytes), true),
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&buf[..n]);
                if bytes.len() > 16 << 20 {
                    return (parse_frames(&bytes), false);
                }
            }
        }
    }
}
