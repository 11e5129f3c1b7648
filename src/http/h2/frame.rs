//! HTTP/2's frames (RFC 9113 §4 and §6) for the own HTTP/2 codec: a frame's header, the checks
//! each kind of frame gets before its payload is looked at, and the frames a server writes.
//!
//! Every rule here is one RFC 9113 sets on what a peer sends, with the error it calls for: a
//! *connection* error ends the connection with `GOAWAY` (§5.4.1), a *stream* error only the
//! stream with `RST_STREAM` (§5.4.2). A frame's length is checked against the size we
//! announced before anything is read into memory, and a frame of a kind this codec does not
//! know is skipped (§4.1, §5.5), as extensions require.

use std::fmt;

/// Bytes of a frame's header (§4.1).
pub const HEADER_LEN: usize = 9;

/// The largest frame a peer may send until it is told otherwise (§4.2), which is all this
/// codec ever allows: a bigger read buffer would only hold more of a client's bytes.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest frame size a peer may announce (§6.5.2).
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Every flow-control window starts at this (§6.9.2) and never exceeds [`MAX_WINDOW`].
pub const DEFAULT_WINDOW: u32 = 65_535;
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (§6, §11.2).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6): each kind gives the bits its own meaning.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Settings identifiers (§6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    Connect = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

impl ErrorCode {
    /// The code a peer sent; an unknown one means nothing special (§7) and is read as
    /// `INTERNAL_ERROR`.
    pub fn from_u32(code: u32) -> ErrorCode {
        use ErrorCode::*;
        [
            NoError,
            Protocol,
            Internal,
            FlowControl,
            SettingsTimeout,
            StreamClosed,
            FrameSize,
            RefusedStream,
            Cancel,
            Compression,
            Connect,
            EnhanceYourCalm,
            InadequateSecurity,
            Http11Required,
        ]
        .get(code as usize)
        .copied()
        .unwrap_or(Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorCode::*;
        f.write_str(match self {
            NoError => "NO_ERROR",
            Protocol => "PROTOCOL_ERROR",
            Internal => "INTERNAL_ERROR",
            FlowControl => "FLOW_CONTROL_ERROR",
            SettingsTimeout => "SETTINGS_TIMEOUT",
            StreamClosed => "STREAM_CLOSED",
            FrameSize => "FRAME_SIZE_ERROR",
            RefusedStream => "REFUSED_STREAM",
            Cancel => "CANCEL",
            Compression => "COMPRESSION_ERROR",
            Connect => "CONNECT_ERROR",
            EnhanceYourCalm => "ENHANCE_YOUR_CALM",
            InadequateSecurity => "INADEQUATE_SECURITY",
            Http11Required => "HTTP_1_1_REQUIRED",
        })
    }
}

/// What a frame did wrong, and what it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection (§5.4.1): `GOAWAY` with this code, then close.
    Connection(ErrorCode),
    /// One stream (§5.4.2): `RST_STREAM` with this code; the connection goes on.
    Stream(u32, ErrorCode),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Connection(code) => write!(f, "connection error {code}"),
            Fault::Stream(id, code) => write!(f, "stream {id} error {code}"),
        }
    }
}

/// A frame's header (§4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    /// The stream, its reserved top bit ignored as §4.1 says.
    pub stream: u32,
}

impl Head {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Head {
        Head {
            len: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize,
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & MAX_WINDOW,
        }
    }

    /// The checks a frame gets from its header alone, before its payload is read: its length
    /// against the size we allow (§4.2) and against what its kind must be, and whether its
    /// kind may come on stream 0 or not (§6).
    pub fn check(&self, max_frame: u32) -> Result<(), Fault> {
        use ErrorCode::{FrameSize, Protocol};
        let conn = Fault::Connection;
        if self.len > max_frame as usize {
            // §4.2: any frame too large may be a connection error; one that can change the
            // connection's state (headers, settings) must be.
            return Err(conn(FrameSize));
        }
        let on_zero = self.stream == 0;
        match self.kind {
            kind::DATA | kind::HEADERS | kind::CONTINUATION if on_zero => Err(conn(Protocol)),
            kind::PRIORITY if on_zero => Err(conn(Protocol)),
            // §6.3: a PRIORITY of the wrong size ends only its stream.
            kind::PRIORITY if self.len != 5 => Err(Fault::Stream(self.stream, FrameSize)),
            kind::RST_STREAM if on_zero => Err(conn(Protocol)),
            kind::RST_STREAM if self.len != 4 => Err(conn(FrameSize)),
            kind::SETTINGS if !on_zero => Err(conn(Protocol)),
            kind::SETTINGS if self.flags & flag::ACK != 0 && self.len != 0 => Err(conn(FrameSize)),
            kind::SETTINGS if !self.len.is_multiple_of(6) => Err(conn(FrameSize)),
            // §8.4: only a server pushes; a client's PUSH_PROMISE is an error.
            kind::PUSH_PROMISE => Err(conn(Protocol)),
            kind::PING if !on_zero => Err(conn(Protocol)),
            kind::PING if self.len != 8 => Err(conn(FrameSize)),
            kind::GOAWAY if !on_zero => Err(conn(Protocol)),
            kind::GOAWAY if self.len < 8 => Err(conn(FrameSize)),
            kind::WINDOW_UPDATE if self.len != 4 => Err(conn(FrameSize)),
            _ => Ok(()),
        }
    }
}

/// Writes a frame's header.
pub fn write_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// The part of a DATA or HEADERS payload that is not padding (§6.1, §6.2): a pad length as
/// long as what follows it or longer is a connection error.
pub fn unpad<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], Fault> {
    if head.flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(Fault::Connection(ErrorCode::FrameSize))?;
    if pad as usize >= payload.len() {
        return Err(Fault::Connection(ErrorCode::Protocol));
    }
    Ok(&rest[..rest.len() - pad as usize])
}

/// A HEADERS frame's header block fragment: its padding and priority fields taken off (§6.2).
/// Priority itself is deprecated (RFC 9113 §5.3.2) and ignored, except that a stream may not
/// depend on itself (§5.3.1 of RFC 7540, kept by RFC 9113 §6.3).
pub fn headers_fragment<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], Fault> {
    let fragment = unpad(head, payload)?;
    if head.flags & flag::PRIORITY == 0 {
        return Ok(fragment);
    }
    if fragment.len() < 5 {
        return Err(Fault::Connection(ErrorCode::FrameSize));
    }
    let depends = u32::from_be_bytes([fragment[0], fragment[1], fragment[2], fragment[3]]);
    if depends & MAX_WINDOW == head.stream {
        return Err(Fault::Stream(head.stream, ErrorCode::Protocol));
    }
    Ok(&fragment[5..])
}

/// A PRIORITY frame (§6.3) is read for one rule only: a stream may not depend on itself.
pub fn check_priority(head: &Head, payload: &[u8]) -> Result<(), Fault> {
    let Some(&[a, b, c, d, _]) = payload.get(..5).and_then(|p| <&[u8; 5]>::try_from(p).ok()) else {
        return Err(Fault::Stream(head.stream, ErrorCode::FrameSize));
    };
    let depends = u32::from_be_bytes([a, b, c, d]);
    if depends & MAX_WINDOW == head.stream {
        return Err(Fault::Stream(head.stream, ErrorCode::Protocol));
    }
    Ok(())
}

/// A SETTINGS frame's settings (§6.5.1), each checked against §6.5.2's bounds. Unknown ones
/// are ignored, as §6.5.2 requires.
pub fn settings(payload: &[u8]) -> Result<Vec<(u16, u32)>, Fault> {
    let mut out = Vec::with_capacity(payload.len() / 6);
    for one in payload.chunks_exact(6) {
        let id = u16::from_be_bytes([one[0], one[1]]);
        let value = u32::from_be_bytes([one[2], one[3], one[4], one[5]]);
        let fault = match id {
            setting::ENABLE_PUSH if value > 1 => Some(ErrorCode::Protocol),
            setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => Some(ErrorCode::FlowControl),
            setting::MAX_FRAME_SIZE
                if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) =>
            {
                Some(ErrorCode::Protocol)
            }
            _ => None,
        };
        if let Some(code) = fault {
            return Err(Fault::Connection(code));
        }
        out.push((id, value));
    }
    Ok(out)
}

/// A WINDOW_UPDATE's increment (§6.9): zero is an error, of the stream it names or of the
/// connection.
pub fn window_increment(head: &Head, payload: &[u8]) -> Result<u32, Fault> {
    let bytes =
        <[u8; 4]>::try_from(payload).map_err(|_| Fault::Connection(ErrorCode::FrameSize))?;
    let increment = u32::from_be_bytes(bytes) & MAX_WINDOW;
    match (increment, head.stream) {
        (0, 0) => Err(Fault::Connection(ErrorCode::Protocol)),
        (0, stream) => Err(Fault::Stream(stream, ErrorCode::Protocol)),
        (increment, _) => Ok(increment),
    }
}

/// The error code a RST_STREAM or GOAWAY carries in `bytes` (a RST_STREAM's payload, a
/// GOAWAY's from its fifth byte); fewer than four bytes read as `INTERNAL_ERROR`.
pub fn error_code(bytes: &[u8]) -> ErrorCode {
    match bytes.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
        Some(code) => ErrorCode::from_u32(u32::from_be_bytes(code)),
        None => ErrorCode::Internal,
    }
}

/// A flow-control window (§6.9): what one side may still send. It may go below zero when the
/// initial size shrinks (§6.9.2), and never above [`MAX_WINDOW`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(i64);

impl Window {
    pub fn new(size: u32) -> Window {
        Window(size as i64)
    }

    /// What may be sent now.
    pub fn available(&self) -> usize {
        self.0.max(0) as usize
    }

    /// A WINDOW_UPDATE: past 2^31-1 is a `FLOW_CONTROL_ERROR` (§6.9.1).
    pub fn grow(&mut self, by: u32) -> Result<(), ErrorCode> {
        self.shift(by as i64)
    }

    /// A change of `SETTINGS_INITIAL_WINDOW_SIZE` moves every stream's window by the
    /// difference (§6.9.2), possibly below zero.
    pub fn shift(&mut self, by: i64) -> Result<(), ErrorCode> {
        let next = self.0 + by;
        if next > MAX_WINDOW as i64 {
            return Err(ErrorCode::FlowControl);
        }
        self.0 = next;
        Ok(())
    }

    /// `n` bytes sent, or received, against the window. Receiving more than the window
    /// allows is the peer's `FLOW_CONTROL_ERROR` (§6.9.1).
    pub fn take(&mut self, n: usize) -> Result<(), ErrorCode> {
        if n as i64 > self.0 {
            return Err(ErrorCode::FlowControl);
        }
        self.0 -= n as i64;
        Ok(())
    }
}

/// Writes SETTINGS with these values (§6.5).
pub fn write_settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    write_head(out, values.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in values {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn write_settings_ack(out: &mut Vec<u8>) {
    write_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// A PING's answer: the same eight bytes, with ACK (§6.7).
pub fn write_ping_ack(out: &mut Vec<u8>, payload: &[u8; 8]) {
    write_head(out, 8, kind::PING, flag::ACK, 0);
    out.extend_from_slice(payload);
}

/// GOAWAY (§6.8): the last stream this side will have processed, and why.
pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode) {
    write_head(out, 8, kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    write_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&(code as u32).to_be_bytes());
}

pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

/// A DATA frame: its header, then `data`.
pub fn write_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    write_head(out, data.len(), kind::DATA, flags, stream);
    out.extend_from_slice(data);
}

/// A header block as HEADERS, then as many CONTINUATION frames as frames of `max_frame`
/// bytes need (§6.2, §6.10). Nothing may come between them on the connection, so they are
/// written together.
/// [`write_headers`] for a block `encode` writes straight into `out`, after room for the
/// frame's head: no block of its own to allocate and copy, per answer. A block larger than
/// one frame (rare: a few KiB of fields) is moved out and split as `write_headers` does.
pub fn encode_headers(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    max_frame: u32,
    encode: impl FnOnce(&mut Vec<u8>),
) {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    encode(out);
    let len = out.len() - at - HEADER_LEN;
    if len > max_frame as usize {
        let block = out.split_off(at + HEADER_LEN);
        out.truncate(at);
        return write_headers(out, stream, &block, end_stream, max_frame);
    }
    let mut flags = flag::END_HEADERS;
    if end_stream {
        flags |= flag::END_STREAM;
    }
    let len = (len as u32).to_be_bytes();
    out[at..at + 5].copy_from_slice(&[len[1], len[2], len[3], kind::HEADERS, flags]);
    out[at + 5..at + HEADER_LEN].copy_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

pub fn write_headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: u32,
) {
    let max = max_frame as usize;
    let mut pieces = block.chunks(max).peekable();
    let first = pieces.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if pieces.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    write_head(out, first.len(), kind::HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        write_head(out, piece.len(), kind::CONTINUATION, flags, stream);
        out.extend_from_slice(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorCode::*;

    fn head(len: usize, kind: u8, flags: u8, stream: u32) -> Head {
        Head {
            len,
            kind,
            flags,
            stream,
        }
    }

    #[test]
    fn a_header_reads_back_and_its_reserved_bit_is_ignored() {
        let mut out = Vec::new();
        write_head(&mut out, 0x12345, kind::HEADERS, flag::END_HEADERS, 7);
        let mut bytes: [u8; HEADER_LEN] = out[..].try_into().unwrap();
        assert_eq!(Head::parse(&bytes), head(0x12345, 1, 4, 7));
        bytes[5] |= 0x80;
        assert_eq!(Head::parse(&bytes).stream, 7);
    }

    /// RFC 9113 §4.2 and §6's rules on a frame's length and stream, each with its error.
    #[test]
    fn each_kind_is_checked_from_its_header() {
        let max = DEFAULT_MAX_FRAME_SIZE;
        let check = |h: Head| h.check(max);
        assert_eq!(
            check(head(16_385, kind::DATA, 0, 1)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(check(head(16_384, kind::DATA, 0, 1)), Ok(()));
        assert_eq!(
            check(head(0, kind::DATA, 0, 0)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(0, kind::CONTINUATION, 0, 0)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(4, kind::PRIORITY, 0, 3)),
            Err(Fault::Stream(3, FrameSize))
        );
        assert_eq!(
            check(head(5, kind::RST_STREAM, 0, 3)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(
            check(head(4, kind::RST_STREAM, 0, 0)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(6, kind::SETTINGS, 0, 1)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(6, kind::SETTINGS, 1, 0)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(
            check(head(7, kind::SETTINGS, 0, 0)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(check(head(12, kind::SETTINGS, 0, 0)), Ok(()));
        assert_eq!(
            check(head(4, kind::PUSH_PROMISE, 0, 1)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(8, kind::PING, 0, 1)),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            check(head(9, kind::PING, 0, 0)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(
            check(head(7, kind::GOAWAY, 0, 0)),
            Err(Fault::Connection(FrameSize))
        );
        assert_eq!(
            check(head(3, kind::WINDOW_UPDATE, 0, 1)),
            Err(Fault::Connection(FrameSize))
        );
        // §5.5: a kind we do not know is skipped, wherever it comes.
        assert_eq!(check(head(100, 0xfa, 0xff, 0)), Ok(()));
    }

    #[test]
    fn padding_and_priority_come_off_a_payload() {
        let padded = head(0, kind::DATA, flag::PADDED, 1);
        assert_eq!(unpad(&padded, &[2, b'a', b'b', 0, 0]), Ok(&b"ab"[..]));
        assert_eq!(unpad(&padded, &[0]), Ok(&b""[..]));
        // Padding as long as the payload: a connection error (§6.1).
        assert_eq!(unpad(&padded, &[1]), Err(Fault::Connection(Protocol)));
        assert_eq!(unpad(&padded, &[]), Err(Fault::Connection(FrameSize)));
        let prioritized = head(0, kind::HEADERS, flag::PRIORITY | flag::PADDED, 5);
        let payload = [1, 0, 0, 0, 3, 16, 0x82, 0];
        assert_eq!(headers_fragment(&prioritized, &payload), Ok(&[0x82][..]));
        // A stream that depends on itself.
        let payload = [0, 0, 0, 0, 5, 16, 0x82, 0];
        assert_eq!(
            headers_fragment(&prioritized, &payload),
            Err(Fault::Stream(5, Protocol))
        );
        assert_eq!(
            check_priority(&head(5, kind::PRIORITY, 0, 9), &[0x80, 0, 0, 9, 1]),
            Err(Fault::Stream(9, Protocol))
        );
    }

    #[test]
    fn settings_out_of_their_bounds_are_errors() {
        let one = |id: u16, value: u32| {
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(&value.to_be_bytes());
            settings(&payload)
        };
        assert_eq!(
            one(setting::ENABLE_PUSH, 2),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            one(setting::INITIAL_WINDOW_SIZE, 1 << 31),
            Err(Fault::Connection(FlowControl))
        );
        assert_eq!(
            one(setting::MAX_FRAME_SIZE, 16_383),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(
            one(setting::MAX_FRAME_SIZE, 1 << 24),
            Err(Fault::Connection(Protocol))
        );
        assert_eq!(one(setting::MAX_FRAME_SIZE, 16_384), Ok(vec![(5, 16_384)]));
        // Unknown settings are passed over, not refused.
        assert_eq!(one(0x99, 7), Ok(vec![(0x99, 7)]));
        let mut out = Vec::new();
        write_settings(
            &mut out,
            &[(setting::MAX_CONCURRENT_STREAMS, 100), (0x99, 1)],
        );
        let head = Head::parse(out[..HEADER_LEN].try_into().unwrap());
        assert_eq!(head.check(DEFAULT_MAX_FRAME_SIZE), Ok(()));
        assert_eq!(settings(&out[HEADER_LEN..]), Ok(vec![(3, 100), (0x99, 1)]));
    }

    #[test]
    fn windows_stay_within_two_to_the_31() {
        let mut w = Window::new(DEFAULT_WINDOW);
        assert_eq!(w.take(65_535), Ok(()));
        assert_eq!(w.take(1), Err(FlowControl));
        assert_eq!(w.grow(MAX_WINDOW), Ok(()));
        assert_eq!(w.grow(1), Err(FlowControl));
        // A smaller initial size can leave a window below zero: nothing may be sent.
        let mut w = Window::new(10);
        w.shift(-20).unwrap();
        assert_eq!(w.available(), 0);
        w.grow(15).unwrap();
        assert_eq!(w.available(), 5);
        let increment = |stream, value: u32| {
            window_increment(
                &head(4, kind::WINDOW_UPDATE, 0, stream),
                &value.to_be_bytes(),
            )
        };
        assert_eq!(increment(0, 0), Err(Fault::Connection(Protocol)));
        assert_eq!(increment(3, 0), Err(Fault::Stream(3, Protocol)));
        assert_eq!(increment(3, 0x8000_0001), Ok(1));
        // Short payloads are errors, never a panic, whoever calls.
        let update = head(3, kind::WINDOW_UPDATE, 0, 1);
        assert_eq!(
            window_increment(&update, &[0, 1]),
            Err(Fault::Connection(FrameSize))
        );
        let priority = head(4, kind::PRIORITY, 0, 1);
        assert_eq!(
            check_priority(&priority, &[0; 4]),
            Err(Fault::Stream(1, FrameSize))
        );
        assert_eq!(error_code(&[0, 0]), Internal);
        assert_eq!(error_code(&[0, 0, 0, 0xb]), EnhanceYourCalm);
    }

    #[test]
    fn a_block_encoded_in_place_is_framed_as_a_block_written_whole() {
        for size in [0usize, 1, 300, DEFAULT_MAX_FRAME_SIZE as usize, 40_000] {
            let block: Vec<u8> = (0..size).map(|i| i as u8).collect();
            for end in [false, true] {
                let (mut whole, mut in_place) = (b"before".to_vec(), b"before".to_vec());
                write_headers(&mut whole, 5, &block, end, DEFAULT_MAX_FRAME_SIZE);
                encode_headers(&mut in_place, 5, end, DEFAULT_MAX_FRAME_SIZE, |out| {
                    out.extend_from_slice(&block)
                });
                assert!(whole == in_place, "{size} bytes, end {end}");
            }
        }
    }

    #[test]
    fn a_long_header_block_goes_out_in_continuation_frames() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_headers(&mut out, 3, &block, true, DEFAULT_MAX_FRAME_SIZE);
        let mut at = 0;
        let mut frames = Vec::new();
        let mut joined = Vec::new();
        while at < out.len() {
            let h = Head::parse(out[at..at + HEADER_LEN].try_into().unwrap());
            joined.extend_from_slice(&out[at + HEADER_LEN..at + HEADER_LEN + h.len]);
            at += HEADER_LEN + h.len;
            frames.push((h.kind, h.flags, h.stream));
        }
        assert_eq!(
            frames,
            [
                (kind::HEADERS, flag::END_STREAM, 3),
                (kind::CONTINUATION, 0, 3),
                (kind::CONTINUATION, flag::END_HEADERS, 3),
            ]
        );
        assert_eq!(joined, block);
        out.clear();
        write_headers(&mut out, 1, &[0x88], false, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(out, [0, 0, 1, 1, 4, 0, 0, 0, 1, 0x88]);
    }
}
