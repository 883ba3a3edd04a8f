//! The WebSocket protocol (RFC 6455), server side, as chat-local speaks it:
//! no extensions, no subprotocols.
//!
//! Sans-I/O: [`Decoder`] turns bytes read from a socket into whole messages
//! and control frames, [`encode`] turns frames into bytes to write. The
//! gateway owns the socket. Owning the codec (rather than a general-purpose
//! WebSocket stack) is what lets an idle connection hold no buffers at all
//! and a burst of frames go out in one write.

use base64::Engine;
use sha1::{Digest, Sha1};

pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// `Sec-WebSocket-Accept` for a handshake's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// Appends one whole, unmasked server frame to `out`.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame; the reason is cut to fit a control frame.
pub fn encode_close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(opcode::CLOSE, &payload, out);
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message passed on; a larger one (up to `max_read`) is read
    /// and dropped as it arrives (never held), and reported as
    /// [`Incoming::TooLarge`].
    pub max_message: usize,
    /// Largest message read at all; a larger one is a [`Violation::TooBig`].
    pub max_read: usize,
}

/// A whole message or a control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A message over [`Limits::max_message`], dropped.
    TooLarge,
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame: its code and reason, if it gave them.
    Close(Option<(u16, String)>),
}

/// Input that fails the connection (RFC 6455, section 7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    Protocol(&'static str),
    InvalidUtf8,
    TooBig,
    /// The server holds as much unfinished input as it allows in all.
    Overloaded,
}

impl Violation {
    pub fn close_code(self) -> u16 {
        use crate::pusher::local::close_code;
        match self {
            Self::Protocol(_) => close_code::PROTOCOL_ERROR,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::TooBig => close_code::TOO_BIG,
            Self::Overloaded => close_code::TRY_AGAIN_LATER,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(what) => f.write_str(what),
            Self::InvalidUtf8 => f.write_str("text is not valid UTF-8"),
            Self::TooBig => f.write_str("message too big"),
            Self::Overloaded => f.write_str("the server is busy; try again later"),
        }
    }
}

/// Reassembles client frames into messages across reads.
///
/// It holds at most one message's worth ([`Limits::max_message`]) plus a
/// frame header: the payload of a message over the limit is dropped as it
/// arrives.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// The start of a frame that has not fully arrived. Empty (and without
    /// an allocation) between frames, which is nearly always.
    partial: Vec<u8>,
    /// A message begun in earlier frames (one field, not two: every idle
    /// socket's task holds a decoder).
    message: Message,
}

#[derive(Debug)]
enum Message {
    /// Between messages.
    None,
    /// A fragmented message so far: its opcode and payload.
    Fragments(u8, Vec<u8>),
    /// A message over [`Limits::max_message`] being dropped: its length so
    /// far, and the payload bytes of its current frame still to come.
    Dropping(Dropping),
}

#[derive(Debug, Clone, Copy)]
struct Dropping {
    so_far: u64,
    frame_left: u64,
    /// The current frame ends the message.
    fin: bool,
}

impl Message {
    fn fragments(&self) -> Option<&Vec<u8>> {
        match self {
            Self::Fragments(_, bytes) => Some(bytes),
            _ => None,
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partial: Vec::new(),
            message: Message::None,
        }
    }

    /// Whether part of a frame or a message has arrived and the rest has not.
    pub fn unfinished(&self) -> bool {
        !self.partial.is_empty() || !matches!(self.message, Message::None)
    }

    /// Bytes held for what has not fully arrived.
    pub fn held_bytes(&self) -> usize {
        self.partial.capacity() + self.message.fragments().map_or(0, Vec::capacity)
    }

    /// Decodes every frame completed by `input`, appending messages and
    /// control frames to `out`. After a violation the connection must be
    /// failed; what was decoded before it is still in `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<Incoming>) -> Result<(), Violation> {
        if self.partial.is_empty() {
            let used = self.decode_frames(input, out)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut partial = std::mem::take(&mut self.partial);
            partial.extend_from_slice(input);
            let used = self.decode_frames(&partial, out)?;
            if used < partial.len() {
                partial.drain(..used);
                self.partial = partial;
            }
        }
        Ok(())
    }

    fn decode_frames(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<Incoming>,
    ) -> Result<usize, Violation> {
        let start = input.len();
        loop {
            if let Message::Dropping(dropping) = &mut self.message {
                let dropped = input
                    .len()
                    .min(usize::try_from(dropping.frame_left).unwrap_or(usize::MAX));
                input = &input[dropped..];
                dropping.frame_left -= dropped as u64;
                if dropping.frame_left > 0 {
                    break;
                }
                if dropping.fin {
                    self.message = Message::None;
                    out.push(Incoming::TooLarge);
                    continue;
                }
                // Between the frames of a dropped message: a header next.
            }
            let Some(header) = self.header(input)? else {
                break;
            };
            if self.starts_dropping(&header) {
                input = &input[header.header_len..];
                continue;
            }
            let end = header.header_len + header.payload_len;
            if input.len() < end {
                break;
            }
            self.frame(&header, &input[header.header_len..end], out)?;
            input = &input[end..];
        }
        Ok(start - input.len())
    }

    /// Whether the data frame `header` begins (or continues) a message over
    /// the limit; if so its payload is to be dropped as it comes.
    fn starts_dropping(&mut self, header: &Header) -> bool {
        let frame_len = header.payload_len as u64;
        match header.opcode {
            opcode::CONTINUATION => {
                if let Message::Dropping(dropping) = &mut self.message {
                    dropping.so_far += frame_len;
                    dropping.frame_left = frame_len;
                    dropping.fin = header.fin;
                    return true;
                }
                let so_far = self.message.fragments().map_or(0, Vec::len);
                if so_far as u64 + frame_len > self.limits.max_message as u64 {
                    self.message = Message::Dropping(Dropping {
                        so_far: so_far as u64 + frame_len,
                        frame_left: frame_len,
                        fin: header.fin,
                    });
                    return true;
                }
                false
            }
            opcode::TEXT | opcode::BINARY
                if matches!(self.message, Message::None)
                    && frame_len > self.limits.max_message as u64 =>
            {
                self.message = Message::Dropping(Dropping {
                    so_far: frame_len,
                    frame_left: frame_len,
                    fin: header.fin,
                });
                true
            }
            _ => false,
        }
    }

    /// The header at the start of `input`, once it has fully arrived.
    fn header(&self, input: &[u8]) -> Result<Option<Header>, Violation> {
        let [first, second, ..] = *input else {
            return Ok(None);
        };
        if first & 0x70 != 0 {
            return Err(Violation::Protocol(
                "reserved bits set without an extension",
            ));
        }
        if second & 0x80 == 0 {
            return Err(Violation::Protocol("client frames must be masked"));
        }
        let (fin, opcode) = (first & 0x80 != 0, first & 0x0F);
        let (length_len, payload_len) = match second & 0x7F {
            126 => match input.get(2..4) {
                Some(bytes) => (2, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
                None => return Ok(None),
            },
            127 => match input.get(2..10) {
                // RFC 6455 5.2: the most significant bit must be 0.
                Some(bytes) if bytes[0] & 0x80 != 0 => {
                    return Err(Violation::Protocol("a 64-bit length with its top bit set"));
                }
                Some(bytes) => (8, u64::from_be_bytes(bytes.try_into().expect("8 bytes"))),
                None => return Ok(None),
            },
            len => (0, u64::from(len)),
        };
        match opcode {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(Violation::Protocol("fragmented control frame"));
                }
                if payload_len > 125 {
                    return Err(Violation::Protocol("control frame over 125 bytes"));
                }
            }
            opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {
                let so_far = match &self.message {
                    Message::Fragments(_, bytes) => bytes.len() as u64,
                    Message::Dropping(dropping) => dropping.so_far,
                    Message::None => 0,
                };
                if opcode != opcode::CONTINUATION && !matches!(self.message, Message::None) {
                    return Err(Violation::Protocol(
                        "a new message began before the last one ended",
                    ));
                }
                if payload_len.saturating_add(so_far) > self.limits.max_read as u64 {
                    return Err(Violation::TooBig);
                }
            }
            _ => return Err(Violation::Protocol("unknown opcode")),
        }
        let header_len = 2 + length_len + 4;
        let Some(mask) = input.get(2 + length_len..header_len) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: mask.try_into().expect("4 bytes"),
            header_len,
            payload_len: payload_len as usize,
        }))
    }

    fn frame(
        &mut self,
        header: &Header,
        payload: &[u8],
        out: &mut Vec<Incoming>,
    ) -> Result<(), Violation> {
        match header.opcode {
            opcode::TEXT | opcode::BINARY => {
                if !matches!(self.message, Message::None) {
                    return Err(Violation::Protocol(
                        "a new message began before the last one ended",
                    ));
                }
                let payload = unmask(payload, header.mask);
                if header.fin {
                    out.push(self.finish_message(header.opcode, payload)?);
                } else {
                    self.message = Message::Fragments(header.opcode, payload);
                }
            }
            opcode::CONTINUATION => {
                let Message::Fragments(_, so_far) = &mut self.message else {
                    return Err(Violation::Protocol("continuation frame outside a message"));
                };
                let start = so_far.len();
                so_far.extend_from_slice(payload);
                unmask_in_place(&mut so_far[start..], header.mask);
                if header.fin {
                    let Message::Fragments(opcode, payload) =
                        std::mem::replace(&mut self.message, Message::None)
                    else {
                        unreachable!("checked above");
                    };
                    out.push(self.finish_message(opcode, payload)?);
                }
            }
            opcode::PING => out.push(Incoming::Ping(unmask(payload, header.mask))),
            opcode::PONG => out.push(Incoming::Pong),
            opcode::CLOSE => out.push(close_frame(unmask(payload, header.mask))?),
            _ => unreachable!("refused in header()"),
        }
        Ok(())
    }

    fn finish_message(&self, opcode: u8, payload: Vec<u8>) -> Result<Incoming, Violation> {
        if payload.len() > self.limits.max_message {
            return Ok(Incoming::TooLarge);
        }
        if opcode == opcode::BINARY {
            return Ok(Incoming::Binary(payload));
        }
        String::from_utf8(payload)
            .map(Incoming::Text)
            .map_err(|_| Violation::InvalidUtf8)
    }
}

fn close_frame(payload: Vec<u8>) -> Result<Incoming, Violation> {
    let (code, reason) = match payload.as_slice() {
        [] => return Ok(Incoming::Close(None)),
        [_] => return Err(Violation::Protocol("close frame with a one-byte body")),
        [high, low, reason @ ..] => (u16::from_be_bytes([*high, *low]), reason),
    };
    // Codes a peer may send (RFC 6455 7.4.1 and 7.4.2, the IANA registry).
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(Violation::Protocol("invalid close code"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
    Ok(Incoming::Close(Some((code, reason.to_owned()))))
}

fn unmask(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = payload.to_vec();
    unmask_in_place(&mut bytes, mask);
    bytes
}

fn unmask_in_place(bytes: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask, mask].concat().try_into().expect("8 bytes"));
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_message: 64,
        max_read: 256,
    };

    /// A client frame: masked, as RFC 6455 requires of clients.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = Vec::new();
        encode(opcode, payload, &mut frame);
        if !fin {
            frame[0] &= 0x7F;
        }
        let header_len = frame.len() - payload.len();
        frame[1] |= 0x80;
        let mut masked = frame[..header_len].to_vec();
        masked.extend_from_slice(&mask);
        masked.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        masked
    }

    fn decode_all(input: &[u8]) -> (Vec<Incoming>, Result<(), Violation>) {
        let mut decoder = Decoder::new(LIMITS);
        let mut out = Vec::new();
        let result = decoder.decode(input, &mut out);
        (out, result)
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut stream = client_frame(true, opcode::TEXT, "héllo, wörld".as_bytes());
        stream.extend(client_frame(true, opcode::PING, b"p"));
        stream.extend(client_frame(false, opcode::BINARY, &[1, 2, 3]));
        stream.extend(client_frame(true, opcode::PONG, b""));
        stream.extend(client_frame(true, opcode::CONTINUATION, &[4; 200]));
        stream.extend(client_frame(
            true,
            opcode::CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
        ));
        let expected = vec![
            Incoming::Text("héllo, wörld".into()),
            Incoming::Ping(b"p".to_vec()),
            Incoming::Pong,
            Incoming::TooLarge,
            Incoming::Close(Some((1000, "bye".into()))),
        ];
        for split in 0..stream.len() {
            let mut decoder = Decoder::new(LIMITS);
            let mut out = Vec::new();
            decoder.decode(&stream[..split], &mut out).unwrap();
            decoder.decode(&stream[split..], &mut out).unwrap();
            assert_eq!(out, expected, "split at {split}");
            assert!(decoder.partial.is_empty() && decoder.partial.capacity() == 0 || split == 0);
        }
    }

    #[test]
    fn fragments_make_one_message() {
        let mut stream = client_frame(false, opcode::TEXT, b"he");
        stream.extend(client_frame(true, opcode::PING, b""));
        stream.extend(client_frame(false, opcode::CONTINUATION, b"ll"));
        stream.extend(client_frame(true, opcode::CONTINUATION, b"o"));
        let (out, result) = decode_all(&stream);
        result.unwrap();
        assert_eq!(
            out,
            [Incoming::Ping(vec![]), Incoming::Text("hello".into())]
        );
    }

    #[test]
    fn violations_fail_the_connection_with_the_right_code() {
        let unmasked = {
            let mut frame = Vec::new();
            encode(opcode::TEXT, b"hi", &mut frame);
            frame
        };
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (client_frame(true, 0x3, b""), 1002),
            (client_frame(false, opcode::PING, b""), 1002),
            (client_frame(true, opcode::PING, &[0; 126]), 1002),
            (client_frame(true, opcode::CONTINUATION, b"x"), 1002),
            (client_frame(true, opcode::CLOSE, &[3]), 1002),
            (client_frame(true, opcode::CLOSE, &[0x03, 0xED]), 1002),
            (client_frame(true, opcode::TEXT, &[0xFF, 0xFE]), 1007),
            (client_frame(true, opcode::TEXT, &[0; 257]), 1009),
            (
                [
                    client_frame(false, opcode::TEXT, b"a"),
                    client_frame(true, opcode::TEXT, b"b"),
                ]
                .concat(),
                1002,
            ),
            (
                [
                    client_frame(false, opcode::BINARY, &[0; 200]),
                    client_frame(true, opcode::CONTINUATION, &[0; 57]),
                ]
                .concat(),
                1009,
            ),
        ];
        for (input, code) in cases {
            let (_, result) = decode_all(&input);
            assert_eq!(
                result.map_err(Violation::close_code),
                Err(code),
                "{input:02x?}"
            );
        }
        // Reserved bits.
        let mut frame = client_frame(true, opcode::TEXT, b"x");
        frame[0] |= 0x40;
        assert_eq!(
            decode_all(&frame).1.map_err(Violation::close_code),
            Err(1002)
        );
    }

    #[test]
    fn a_huge_length_is_refused_before_its_payload_arrives() {
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(decode_all(&header).1, Err(Violation::TooBig));
        // The top bit of a 64-bit length must be 0 (RFC 6455 5.2).
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            decode_all(&header).1.map_err(Violation::close_code),
            Err(1002)
        );
    }

    #[test]
    fn a_message_over_the_limit_is_dropped_as_it_arrives_never_held() {
        // 200 bytes in one frame, then 40 + 40 in fragments: both over 64.
        let mut stream = client_frame(true, opcode::TEXT, &[b'a'; 200]);
        stream.extend(client_frame(false, opcode::TEXT, &[b'b'; 40]));
        stream.extend(client_frame(true, opcode::PING, b""));
        stream.extend(client_frame(true, opcode::CONTINUATION, &[b'c'; 40]));
        stream.extend(client_frame(true, opcode::TEXT, b"ok"));
        let expected = vec![
            Incoming::TooLarge,
            Incoming::Ping(vec![]),
            Incoming::TooLarge,
            Incoming::Text("ok".into()),
        ];
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut decoder = Decoder::new(LIMITS);
            let mut out = Vec::new();
            let mut most_held = 0;
            for piece in stream.chunks(chunk) {
                decoder.decode(piece, &mut out).unwrap();
                most_held = most_held.max(decoder.held_bytes());
            }
            assert_eq!(out, expected, "chunks of {chunk}");
            assert!(!decoder.unfinished());
            assert!(
                most_held <= LIMITS.max_message + 14 + 64,
                "held {most_held} bytes in chunks of {chunk}"
            );
        }
        // Part of a dropped message is unfinished, like any other.
        let mut decoder = Decoder::new(LIMITS);
        decoder
            .decode(
                &client_frame(true, opcode::TEXT, &[0; 200])[..100],
                &mut Vec::new(),
            )
            .unwrap();
        assert!(decoder.unfinished());
        assert_eq!(decoder.held_bytes(), 0);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            encode(opcode::TEXT, &vec![b'a'; len], &mut out);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        encode_close(1001, &"é".repeat(100), &mut out);
        assert!(out.len() <= 127 && std::str::from_utf8(&out[4..]).is_ok());
    }
}
