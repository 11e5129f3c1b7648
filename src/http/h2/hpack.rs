//! HPACK (RFC 7541), HTTP/2's header compression, as the own HTTP/2 codec needs it: a decoder
//! that keeps the client's dynamic table within the size we allow, and an encoder that never
//! uses one.
//!
//! HPACK is where HTTP/2's header attacks live. A header block refers to entries of a table
//! both ends keep, so a decoder must track every insertion exactly, even of fields it is going
//! to refuse, or the next block decodes to other fields. What can go wrong, and what this
//! decoder does about it:
//!
//! * **the table's memory**: its size (each entry's name and value plus 32 bytes, §4.1) never
//!   exceeds the limit we announced (`SETTINGS_HEADER_TABLE_SIZE`, RFC 9113 §6.5.2); a size
//!   update above it, or one not at the start of a block, is a decoding error (§4.2, §6.3);
//! * **HPACK bombs**: one small indexed byte can stand for a 4 KiB entry, again and again. The
//!   decoder hands each field to its caller as it goes and keeps none, so the caller bounds the
//!   decoded list (RFC 9113 §6.5.2's size: name, value and 32 bytes per field) and stops
//!   storing when over, while the decoder still reads the block to its end;
//! * **integers and lengths** that do not fit, or point past the block: errors, never a wrap;
//! * **Huffman strings** (§5.2): padding longer than 7 bits, padding that is not the EOS code's
//!   leading ones, or the EOS symbol itself inside a string are errors.
//!
//! Any error here is a connection error, `COMPRESSION_ERROR` (RFC 9113 §4.3): the table can no
//! longer be trusted.
//!
//! The encoder writes every field as a literal *without indexing* (§6.2.2), naming it by the
//! static table where it can, and without Huffman coding: answers cost no table memory at
//! either end, and no CPU to compress. A proxy's answers are mostly unique bytes (dates,
//! lengths, cookies), so an encoder table would save little.

use std::collections::VecDeque;
use std::fmt;
use std::sync::OnceLock;

/// The table size both ends start with (RFC 9113 §6.5.2's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// What a header block did wrong. Each is a `COMPRESSION_ERROR` for the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The block ends inside a representation.
    Truncated,
    /// An integer longer than any this decoder accepts (RFC 7541 §5.1 leaves the bound to us).
    Integer,
    /// Index 0, or past the static and dynamic tables (§2.3.3).
    Index,
    /// A Huffman string that is not one (§5.2).
    Huffman,
    /// A table size update above the size we allow, or after a field (§4.2, §6.3).
    SizeUpdate,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "header block ends inside a field",
            Error::Integer => "integer too large",
            Error::Index => "no such table index",
            Error::Huffman => "malformed Huffman string",
            Error::SizeUpdate => "table size update not allowed",
        })
    }
}

impl std::error::Error for Error {}

/// The static table (RFC 7541 Appendix A): index 1 is `STATIC[0]`.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// What an entry costs in the table beyond its bytes (§4.1).
const ENTRY_OVERHEAD: usize = 32;

/// An integer past this is refused: no length, index or table size we accept comes near it,
/// and it keeps every sum below overflow.
const MAX_INTEGER: usize = 1 << 24;

/// One entry of the dynamic table: its name and value in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name]
    }
    fn value(&self) -> &[u8] {
        &self.bytes[self.name..]
    }
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The decoding half of one connection's HPACK state.
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]` (§2.3.3).
    table: VecDeque<Entry>,
    size: usize,
    /// The size the client last chose with a size update (§6.3), at most `allowed`.
    max: usize,
    /// The size we announced in `SETTINGS_HEADER_TABLE_SIZE`.
    allowed: usize,
}

thread_local! {
    /// Where Huffman strings are decoded, emptied after each field: one per thread, not one
    /// per connection, since no decoding waits for anything (an idle connection, the most
    /// common kind, then holds none).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Decoder {
    /// A decoder whose table may hold `allowed` bytes (§4.1's accounting), the size we
    /// announce to the client.
    pub fn new(allowed: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: allowed,
            allowed,
        }
    }

    /// The table's size by §4.1's accounting: what the client can make us hold.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Decodes one complete header block (HEADERS and its CONTINUATIONs, joined), handing
    /// each field to `field` in order. On an error the connection must end: fields may have
    /// been handed on before it, and the table is no longer in step with the client's.
    pub fn decode(&mut self, block: &[u8], field: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        // Taken, not borrowed: nothing can then see it half used.
        let mut scratch = SCRATCH.take();
        let decoded = self.decode_with(block, field, &mut scratch);
        // Huffman output does not outlive its block: a long one would otherwise stay held.
        if scratch.capacity() <= 4096 {
            scratch.clear();
            SCRATCH.set(scratch);
        }
        decoded
    }

    fn decode_with(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
        scratch: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // §6.1: an indexed field.
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                // §6.3: a size update, only before the block's first field (§4.2).
                let size = integer(block, &mut at, 5)?;
                if fields_seen || size > self.allowed {
                    return Err(Error::SizeUpdate);
                }
                self.max = size;
                self.evict_to(size);
            } else {
                // §6.2: a literal, with incremental indexing (01), never indexed (0001) or
                // without indexing (0000).
                let (indexing, prefix) = if first & 0x40 != 0 {
                    (true, 6)
                } else {
                    (false, 4)
                };
                let index = integer(block, &mut at, prefix)?;
                scratch.clear();
                let name = if index == 0 {
                    Str::read(block, &mut at, scratch)?
                } else {
                    // Checked now, borrowed below (the table does not change before).
                    self.entry(index)?;
                    Str::Indexed(index)
                };
                let value = Str::read(block, &mut at, scratch)?;
                let name_bytes = match name {
                    Str::Indexed(i) => self.entry(i)?.0,
                    other => other.bytes(block, scratch),
                };
                let value_bytes = value.bytes(block, scratch);
                field(name_bytes, value_bytes);
                if indexing {
                    // Copied before any eviction: the name may be an entry about to go (§4.4).
                    let mut bytes = Vec::with_capacity(name_bytes.len() + value_bytes.len());
                    bytes.extend_from_slice(name_bytes);
                    bytes.extend_from_slice(value_bytes);
                    let entry = Entry {
                        name: name_bytes.len(),
                        bytes: bytes.into_boxed_slice(),
                    };
                    self.insert(entry);
                }
                fields_seen = true;
            }
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err(Error::Index),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|e| (e.name(), e.value()))
                .ok_or(Error::Index),
        }
    }

    /// §4.4: an entry larger than the table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max - size);
        self.size += size;
        self.table.push_front(entry);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
        if self.table.is_empty() {
            // An emptied table gives its memory back: an idle connection holds none.
            self.table = VecDeque::new();
        }
    }
}

/// Where a decoded string is: in the block, in the scratch buffer, or a table entry's name.
#[derive(Clone, Copy)]
enum Str {
    Block(usize, usize),
    Scratch(usize, usize),
    Indexed(usize),
}

impl Str {
    fn read(block: &[u8], at: &mut usize, scratch: &mut Vec<u8>) -> Result<Str, Error> {
        let huffman = *block.get(*at).ok_or(Error::Truncated)? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let end = at.checked_add(len).filter(|&e| e <= block.len());
        let end = end.ok_or(Error::Truncated)?;
        let raw = &block[*at..end];
        *at = end;
        if !huffman {
            return Ok(Str::Block(end - len, end));
        }
        let start = scratch.len();
        huffman_decode(raw, scratch)?;
        Ok(Str::Scratch(start, scratch.len()))
    }

    fn bytes<'a>(self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match self {
            Str::Block(s, e) => &block[s..e],
            Str::Scratch(s, e) => &scratch[s..e],
            Str::Indexed(_) => &[],
        }
    }
}

/// §5.1: an integer with an `prefix`-bit prefix, starting at `block[*at]`.
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Result<usize, Error> {
    let mask = (1u16 << prefix) as u8 - 1;
    let mut value = (*block.get(*at).ok_or(Error::Truncated)? & mask) as usize;
    *at += 1;
    if value < mask as usize {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(Error::Truncated)?;
        *at += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if value > MAX_INTEGER {
            return Err(Error::Integer);
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        // Past 4 continuation bytes the value is over the bound, or padded with zeros.
        if shift > 21 {
            return Err(Error::Integer);
        }
    }
}

/// §5.1's encoding of `value` with an `prefix`-bit prefix, the top bits of the first byte
/// being `flags`.
pub fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = ((1u16 << prefix) - 1) as usize;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Writes one field as a literal without indexing (§6.2.2), its name from the static table
/// where one matches, neither string Huffman-coded.
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match static_name(name) {
        Some(index) => encode_integer(out, 0x00, 4, index),
        None => {
            out.push(0x00);
            encode_integer(out, 0x00, 7, name.len());
            out.extend_from_slice(name);
        }
    }
    encode_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// [`encode_field`] for a name as an HTTP/1 backend may spell it (`Content-Type`), written in
/// lower case as HTTP/2 requires (RFC 9113 §8.2.1), without a copy of the name.
pub fn encode_field_lowercase(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // Every name of the static table fits.
    let mut lower = [0u8; 32];
    if let Some(room) = lower.get_mut(..name.len()) {
        room.copy_from_slice(name);
        room.make_ascii_lowercase();
        return encode_field(out, room, value);
    }
    out.push(0x00);
    encode_integer(out, 0x00, 7, name.len());
    let at = out.len();
    out.extend_from_slice(name);
    out[at..].make_ascii_lowercase();
    encode_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// Writes `:status`: one byte for the seven statuses the static table holds, a literal with
/// its indexed name otherwise.
pub fn encode_status(out: &mut Vec<u8>, status: u16) {
    let index = match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => {
            let digits = [
                b'0' + (status / 100 % 10) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ];
            encode_integer(out, 0x00, 4, 8);
            encode_integer(out, 0x00, 7, 3);
            out.extend_from_slice(&digits);
            return;
        }
    };
    encode_integer(out, 0x80, 7, index);
}

/// The static table's first index for `name` (names are lowercase in HTTP/2, RFC 9113
/// §8.2.1).
///
/// A `match`, which the compiler turns into a switch on the length and a few comparisons: a
/// search through the table cost about 200 instructions for each field of each answer.
/// A test holds it to the table.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

// The Huffman code (RFC 7541 Appendix B): each byte's code, then its length in bits.
include!("huffman.rs");

/// The EOS symbol's code: 30 ones (Appendix B, symbol 256).
const EOS: (u32, u8) = (0x3fff_ffff, 30);

/// The code as a binary tree: `[left, right]` per node, a child with [`LEAF`] set being the
/// symbol in its low bits (256 for EOS), any other a node's index.
const LEAF: u16 = 0x8000;

fn tree() -> &'static [[u16; 2]] {
    static TREE: OnceLock<Vec<[u16; 2]>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![[0u16; 2]];
        let codes = CODES.iter().zip(LENGTHS.iter()).map(|(&c, &l)| (c, l));
        for (symbol, (code, len)) in codes.chain(std::iter::once(EOS)).enumerate() {
            let mut node = 0;
            for i in (0..len).rev() {
                let bit = ((code >> i) & 1) as usize;
                if i == 0 {
                    nodes[node][bit] = LEAF | symbol as u16;
                } else {
                    if nodes[node][bit] == 0 {
                        nodes.push([0, 0]);
                        nodes[node][bit] = (nodes.len() - 1) as u16;
                    }
                    node = nodes[node][bit] as usize;
                }
            }
        }
        nodes
    })
}

/// §5.2: decodes a Huffman string onto `out`.
pub fn huffman_decode(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let tree = tree();
    let mut node = 0usize;
    // Bits read since the last symbol, and whether they were all ones: the only padding a
    // string may end with is up to 7 of EOS's leading ones.
    let (mut pending, mut ones) = (0u32, true);
    for &byte in raw {
        for i in (0..8).rev() {
            let bit = (byte >> i) & 1;
            let next = tree[node][bit as usize];
            pending += 1;
            ones &= bit == 1;
            if next & LEAF != 0 {
                let symbol = next & !LEAF;
                if symbol == 256 {
                    return Err(Error::Huffman);
                }
                out.push(symbol as u8);
                node = 0;
                pending = 0;
                ones = true;
            } else {
                node = next as usize;
            }
        }
    }
    if pending > 7 || !ones {
        return Err(Error::Huffman);
    }
    Ok(())
}

/// §5.2's encoding of `raw`, for tests and for clients written with this module.
pub fn huffman_encode(raw: &[u8], out: &mut Vec<u8>) {
    let (mut bits, mut held) = (0u64, 0u32);
    for &b in raw {
        let (code, len) = (CODES[b as usize] as u64, LENGTHS[b as usize] as u32);
        bits = (bits << len) | code;
        held += len;
        while held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
        bits &= (1u64 << held) - 1;
    }
    if held > 0 {
        // Padded with EOS's leading ones.
        out.push(((bits << (8 - held)) | (0xff >> held)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(out)
    }

    /// The `match` finds what a search through the table finds, for every name in it and
    /// for names close to one.
    #[test]
    fn static_names_are_the_table_s() {
        for (name, _) in STATIC {
            let searched = STATIC.iter().position(|(n, _)| *n == name).map(|i| i + 1);
            assert_eq!(static_name(name.as_bytes()), searched, "{name}");
            assert_eq!(static_name(name.to_uppercase().as_bytes()), None);
            assert_eq!(static_name(&name.as_bytes()[1..]), None, "{name}");
            assert_eq!(static_name(format!("{name}x").as_bytes()), None, "{name}");
        }
        assert_eq!(static_name(b""), None);
        assert_eq!(static_name(b"x-forwarded-for"), None);
    }

    /// A name in any case is written as its lower-case spelling would be, short (from the
    /// static table) or long (a literal).
    #[test]
    fn names_are_written_in_lower_case() {
        let long = "X-A-Name-Longer-Than-Thirty-Two-Bytes";
        for name in [
            "Content-Type",
            "content-type",
            "X-Custom",
            long,
            &long.to_lowercase(),
        ] {
            let (mut mixed, mut lower) = (Vec::new(), Vec::new());
            encode_field_lowercase(&mut mixed, name.as_bytes(), b"v");
            encode_field(&mut lower, name.to_lowercase().as_bytes(), b"v");
            assert_eq!(mixed, lower, "{name}");
            let fields = decode(&mut Decoder::new(DEFAULT_TABLE_SIZE), &mixed).unwrap();
            assert_eq!(fields[0].0, name.to_lowercase());
        }
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541 C.3 (without Huffman) and C.4 (the same requests with it): three requests on
    /// one connection, the table carrying `:authority` and more from one to the next.
    #[test]
    fn rfc7541_request_examples_decode_in_sequence() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
            let first = decode(&mut d, &hex(blocks[0])).unwrap();
            assert_eq!(
                first,
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                ])
            );
            assert_eq!(d.table_size(), 57);
            let second = decode(&mut d, &hex(blocks[1])).unwrap();
            assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
            assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
            assert_eq!(d.table_size(), 110);
            let third = decode(&mut d, &hex(blocks[2])).unwrap();
            assert_eq!(
                third,
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.table_size(), 164);
        }
    }

    /// RFC 7541 C.5: responses with a 256-byte table, where each insertion evicts the oldest.
    #[test]
    fn rfc7541_response_examples_evict_the_oldest_entries() {
        let mut d = Decoder::new(256);
        let first = decode(
            &mut d,
            &hex(
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230
                  3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65
                  7861 6d70 6c65 2e63 6f6d",
            ),
        )
        .unwrap();
        assert_eq!(first[0], (":status".into(), "302".into()));
        assert_eq!(
            first[2],
            ("date".into(), "Mon, 21 Oct 2013 20:13:21 GMT".into())
        );
        assert_eq!(d.table_size(), 222);
        let second = decode(&mut d, &hex("4803 3330 37c1 c0bf")).unwrap();
        assert_eq!(second[0], (":status".into(), "307".into()));
        assert_eq!(
            second[3],
            ("location".into(), "https://www.example.com".into())
        );
        assert_eq!(d.table_size(), 222);
        let third = decode(
            &mut d,
            &hex(
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220
                  474d 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157
                  454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076
                  6572 7369 6f6e 3d31",
            ),
        )
        .unwrap();
        assert_eq!(
            third,
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn indexes_outside_the_tables_are_errors() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decode(&mut d, &[0x80]), Err(Error::Index));
        // 62: the first dynamic entry, of an empty table.
        assert_eq!(decode(&mut d, &[0xbe]), Err(Error::Index));
        // A literal naming a missing entry.
        assert_eq!(decode(&mut d, &[0x7f, 0x00, 0x01, b'x']), Err(Error::Index));
    }

    #[test]
    fn size_updates_are_bounded_and_come_first() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        // 4096 (31 + 4065): allowed; 4097: above what we announced.
        assert_eq!(decode(&mut d, &[0x3f, 0xe1, 0x1f]), Ok(vec![]));
        assert_eq!(decode(&mut d, &[0x3f, 0xe2, 0x1f]), Err(Error::SizeUpdate));
        // After a field, even a smaller one is refused (§4.2).
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decode(&mut d, &[0x82, 0x20]), Err(Error::SizeUpdate));
        // Shrinking evicts: a 57-byte entry, then a size of 0.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        decode(&mut d, &hex("4100")).unwrap();
        assert_eq!(d.table_size(), 42);
        decode(&mut d, &[0x20]).unwrap();
        assert_eq!(d.table_size(), 0);
        // And the table stays at 0: an insertion is dropped, not kept.
        decode(&mut d, &hex("4100")).unwrap();
        assert_eq!(d.table_size(), 0);
        assert_eq!(decode(&mut d, &[0xbe]), Err(Error::Index));
    }

    #[test]
    fn integers_and_lengths_that_do_not_fit_are_errors() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(decode(&mut d, &huge), Err(Error::Integer));
        // Zero continuation bytes padding a small value still count against the bound.
        let padded = [0xff, 0x80, 0x80, 0x80, 0x80, 0x00];
        assert_eq!(decode(&mut d, &padded), Err(Error::Integer));
        assert_eq!(decode(&mut d, &[0xff]), Err(Error::Truncated));
        // A string of 10 bytes with 3 present.
        let short = [0x00, 0x0a, b'a', b'b', b'c'];
        assert_eq!(decode(&mut d, &short), Err(Error::Truncated));
        // A name with no value after it.
        assert_eq!(decode(&mut d, &[0x00, 0x01, b'a']), Err(Error::Truncated));
    }

    #[test]
    fn huffman_strings_that_are_not_are_errors() {
        let mut out = Vec::new();
        // 30 ones are EOS, which may not appear in a string.
        assert_eq!(huffman_decode(&[0xff; 4], &mut out), Err(Error::Huffman));
        // "a" (00011) padded with ones is fine; with zeros it is not; with a whole byte of
        // ones more, the padding is longer than 7 bits.
        out.clear();
        assert_eq!(huffman_decode(&[0x1f], &mut out), Ok(()));
        assert_eq!(out, b"a");
        assert_eq!(huffman_decode(&[0x18], &mut out), Err(Error::Huffman));
        assert_eq!(huffman_decode(&[0x1f, 0xff], &mut out), Err(Error::Huffman));
        // Through the decoder, the same string is a COMPRESSION_ERROR.
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(
            decode(&mut d, &[0x00, 0x81, 0x18, 0x00]),
            Err(Error::Huffman)
        );
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        for len in [0, 1, 2, 3, 7, 100, all.len()] {
            let mut coded = Vec::new();
            huffman_encode(&all[..len], &mut coded);
            let mut back = Vec::new();
            huffman_decode(&coded, &mut back).unwrap();
            assert_eq!(back, &all[..len]);
        }
    }

    /// An HPACK bomb: one 4 KiB entry, then a block that names it a thousand times. The table
    /// stays at its bound and the decoder holds nothing more: each field goes to the caller,
    /// whose list bound (RFC 9113 §6.5.2) decides what is kept.
    #[test]
    fn a_bomb_costs_the_table_and_no_more() {
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        let mut block = vec![0x40, 0x01, b'x'];
        encode_integer(&mut block, 0, 7, 4000);
        block.extend(std::iter::repeat_n(b'v', 4000));
        d.decode(&block, |_, _| {}).unwrap();
        assert_eq!(d.table_size(), 4033);
        let bomb = vec![0xbe; 1000];
        let (mut count, mut listed) = (0, 0usize);
        d.decode(&bomb, |n, v| {
            count += 1;
            listed += n.len() + v.len() + 32;
        })
        .unwrap();
        assert_eq!(count, 1000);
        assert!(listed > 4_000_000);
        assert_eq!(d.table_size(), 4033);
        // An entry larger than the table empties it and is not kept (§4.4).
        let mut big = vec![0x40, 0x01, b'y'];
        encode_integer(&mut big, 0, 7, 5000);
        big.extend(std::iter::repeat_n(b'w', 5000));
        d.decode(&big, |_, _| {}).unwrap();
        assert_eq!(d.table_size(), 0);
    }

    #[test]
    fn what_the_encoder_writes_decodes_to_the_same_fields() {
        let mut block = Vec::new();
        for status in [200, 204, 404, 500, 302, 103, 599] {
            block.clear();
            encode_status(&mut block, status);
            let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
            let got = decode(&mut d, &block).unwrap();
            assert_eq!(got, fields(&[(":status", &status.to_string())]));
        }
        block.clear();
        let long = "v".repeat(300);
        let sent = [
            ("content-type", "text/plain"),
            ("x-served-by", "b1"),
            ("set-cookie", "lb=abc; HttpOnly"),
            ("x-long", long.as_str()),
            ("date", ""),
        ];
        for (n, v) in sent {
            encode_field(&mut block, n.as_bytes(), v.as_bytes());
        }
        let mut d = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(decode(&mut d, &block).unwrap(), fields(&sent));
        // Literals without indexing: nothing was added to the decoder's table.
        assert_eq!(d.table_size(), 0);
    }
}
