//! A request head's fields, as chapter 12's rules read and change them, two ways.
//!
//! The rules a request goes through on its way to a backend (the affinity cookie taken out,
//! hop-by-hop fields dropped, `X-Forwarded-*` set) are written once, over the [`Fields`]
//! trait, and run on either of two heads:
//!
//! * hyper's [`HeaderMap`], on hyper's path: every field parsed into a map;
//! * [`ReadFields`], on the balancer's own HTTP/1 path (`http::h1`), and for an HTTP/2
//!   request the own codec hands to its HTTP/1.1 hop (`h1::hop`, chapter 17): the fields stay
//!   where they were read (or decoded), as positions; what the rules add or copy is kept
//!   beside them, and the head is written out from both. No field is copied into a map and out
//!   again, which is most of what a map costs a small request (chapter 12 measured it: about a
//!   microsecond, a sixth of the path's own CPU per request).
//!
//! Field names are compared without regard to case (RFC 9110 §5.1); the rules pass them in
//! lower case.

use hyper::header::{Entry, HeaderMap, HeaderName, HeaderValue};

/// A head's fields, as the forwarding rules see them.
pub trait Fields {
    /// The values of the fields named `name` (lower case), in order.
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;

    fn contains(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }

    /// Removes every field named `name` (lower case).
    fn remove(&mut self, name: &str);

    /// Removes every field named in `names` (lower case).
    fn remove_all(&mut self, names: &[&str]) {
        for name in names {
            self.remove(name);
        }
    }

    /// Adds a field after those of the same name.
    fn append(&mut self, name: HeaderName, value: HeaderValue);

    /// Replaces every field named `name` with this one.
    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(name.as_str());
        self.append(name, value);
    }

    /// Sets `to` to the first `from` field's value, or removes `to` when there is none.
    fn copy(&mut self, from: &str, to: HeaderName);

    /// Replaces every field named `name` with `values`, in order (none: removes them).
    fn set_all(&mut self, name: HeaderName, values: Vec<HeaderValue>) {
        self.remove(name.as_str());
        for value in values {
            self.append(name.clone(), value);
        }
    }
}

/// How many distinct names a map may have for [`absent`] to look through them rather than ask
/// the map.
const SCAN: usize = 24;

/// Whether `map` certainly has no field named `name`, found by comparing the names it has.
///
/// A map asked by a `&str` first parses the name (against the table of standard names) and
/// hashes it; the rules ask mostly for fields that are not there (hop-by-hop ones, which an
/// HTTP/2 request cannot even carry, old `X-Forwarded-*`), a dozen times a request. A few
/// comparisons of lengths and bytes cost less: with them, `Forwarding::apply` and
/// `strip_hop_by_hop` went from about 5,700 instructions a request to 2,000 (callgrind, an
/// HTTP/2 `GET` through the own hop, chapter 17).
fn absent(map: &HeaderMap, name: &str) -> bool {
    map.keys_len() <= SCAN && !map.keys().any(|k| k.as_str() == name)
}

impl Fields for HeaderMap {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        (!absent(self, name))
            .then(|| self.get_all(name))
            .into_iter()
            .flatten()
            .map(HeaderValue::as_bytes)
    }

    fn remove(&mut self, name: &str) {
        if !absent(self, name) {
            HeaderMap::remove(self, name);
        }
    }

    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::append(self, name, value);
    }

    fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        HeaderMap::insert(self, name, value);
    }

    /// In place, with one lookup (a returning user's `Cookie`, on every request).
    fn set_all(&mut self, name: HeaderName, values: Vec<HeaderValue>) {
        let mut values = values.into_iter();
        match (self.entry(name), values.next()) {
            (Entry::Occupied(mut entry), Some(first)) => {
                entry.insert(first);
                values.for_each(|v| entry.append(v));
            }
            (Entry::Occupied(entry), None) => {
                entry.remove_entry_mult();
            }
            (Entry::Vacant(entry), Some(first)) => {
                let mut entry = entry.insert_entry(first);
                values.for_each(|v| entry.append(v));
            }
            (Entry::Vacant(_), None) => {}
        }
    }

    fn copy(&mut self, from: &str, to: HeaderName) {
        let value = match absent(self, from) {
            true => None,
            false => self.get(from).cloned(),
        };
        match value {
            Some(value) => HeaderMap::insert(self, to, value),
            None => HeaderMap::remove(self, to),
        };
    }
}

/// Where a name or a value is in the buffer it was read into: `buf[start..end]`.
pub type Span = (usize, usize);

/// Fields as read: where each name and value is.
pub type ReadList = Vec<(Span, Span)>;

/// Fields added: a name and a value each.
pub type AddedList = Vec<(HeaderName, Value)>;

/// The fields of a head read into `buf`, by position, and those the rules added.
pub struct ReadFields<'b> {
    buf: &'b [u8],
    /// The client's fields still to be sent, in the client's order and spelling.
    read: ReadList,
    /// Fields the rules added, sent after them.
    added: AddedList,
    /// A bit for each name either list has had ([`name_bit`]): a name whose bit is clear is
    /// certainly not there, and most names the rules remove are not.
    names: u64,
}

/// A name's bit in [`ReadFields::names`], from its length and last byte (either case): names
/// the rules look for mostly differ in one or the other.
fn name_bit(name: &[u8]) -> u64 {
    let last = name.last().map_or(0, u8::to_ascii_lowercase) as usize;
    1 << ((name.len().wrapping_mul(7) + last) % 64)
}

/// An added field's value.
#[derive(Clone)]
pub enum Value {
    Made(HeaderValue),
    /// Another field's value, still in the buffer (`X-Forwarded-Host` is `Host`'s).
    Copied(Span),
}

impl<'b> ReadFields<'b> {
    /// `read`: the head's fields in `buf`, as its parser found them (names and values checked).
    /// `added`: an empty list to add to. Both lists come back from [`ReadFields::into_lists`],
    /// for the next head: no allocation per request.
    pub fn new(buf: &'b [u8], read: ReadList, added: AddedList) -> ReadFields<'b> {
        let names = read
            .iter()
            .fold(0, |bits, &((n0, n1), _)| bits | name_bit(&buf[n0..n1]));
        let names = added
            .iter()
            .fold(names, |bits, (n, _)| bits | name_bit(n.as_str().as_bytes()));
        ReadFields {
            buf,
            read,
            added,
            names,
        }
    }

    /// The two lists, emptied.
    pub fn into_lists(mut self) -> (ReadList, AddedList) {
        self.read.clear();
        self.added.clear();
        (self.read, self.added)
    }

    fn bytes<'a>(&'a self, value: &'a Value) -> &'a [u8] {
        match value {
            Value::Made(v) => v.as_bytes(),
            Value::Copied((v0, v1)) => &self.buf[*v0..*v1],
        }
    }

    /// Every field, as the head will carry it: name, value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let read = self
            .read
            .iter()
            .map(|&((n0, n1), (v0, v1))| (&self.buf[n0..n1], &self.buf[v0..v1]));
        let added = self
            .added
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), self.bytes(v)));
        read.chain(added)
    }
}

impl Fields for ReadFields<'_> {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let maybe = self.names & name_bit(name.as_bytes()) != 0;
        maybe
            .then(|| self.iter())
            .into_iter()
            .flatten()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn remove(&mut self, name: &str) {
        self.remove_all(&[name]);
    }

    /// One pass over the fields for all of `names`, not one per name; and a look before
    /// the list is rewritten, since the rules mostly remove what is not there (a dozen names
    /// a request: `Vec::retain` on every one was 1,700 instructions of an HTTP/2 `GET`).
    fn remove_all(&mut self, names: &[&str]) {
        if names
            .iter()
            .all(|name| self.names & name_bit(name.as_bytes()) == 0)
        {
            return;
        }
        let buf = self.buf;
        // Lengths first: most names differ in theirs.
        let named = |n: &[u8]| {
            names
                .iter()
                .any(|name| name.len() == n.len() && n.eq_ignore_ascii_case(name.as_bytes()))
        };
        if self.read.iter().any(|&((n0, n1), _)| named(&buf[n0..n1])) {
            self.read.retain(|&((n0, n1), _)| !named(&buf[n0..n1]));
        }
        if self.added.iter().any(|(n, _)| named(n.as_str().as_bytes())) {
            self.added.retain(|(n, _)| !named(n.as_str().as_bytes()));
        }
    }

    fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.names |= name_bit(name.as_str().as_bytes());
        self.added.push((name, Value::Made(value)));
    }

    fn copy(&mut self, from: &str, to: HeaderName) {
        let buf = self.buf;
        let found = match self
            .read
            .iter()
            .find(|&&((n0, n1), _)| buf[n0..n1].eq_ignore_ascii_case(from.as_bytes()))
        {
            Some(&(_, value)) => Some(Value::Copied(value)),
            None => self
                .added
                .iter()
                .find(|(n, _)| n.as_str() == from)
                .map(|(_, v)| v.clone()),
        };
        self.remove(to.as_str());
        if let Some(value) = found {
            self.names |= name_bit(to.as_str().as_bytes());
            self.added.push((to, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head's fields both ways: a map, and positions in the head's text.
    fn both(text: &str) -> (HeaderMap, Vec<(Span, Span)>) {
        let mut map = HeaderMap::new();
        let mut read = Vec::new();
        let mut at = 0;
        for line in text.split_inclusive("\r\n") {
            let (name, value) = line.trim_end().split_once(": ").unwrap();
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            let v0 = at + name.len() + 2;
            read.push(((at, at + name.len()), (v0, v0 + value.len())));
            at += line.len();
        }
        (map, read)
    }

    /// What the rules left, as `name: value` lines in lower case, sorted: a map keeps no
    /// order between names.
    fn lines<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<String> {
        let mut out: Vec<String> = fields
            .map(|(n, v)| {
                format!(
                    "{}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                )
                .to_ascii_lowercase()
            })
            .collect();
        out.sort();
        out
    }

    /// `ReadFields::names` only ever says "not there" of a name that is not: every name, in
    /// any case, added or read, is found and removed, whichever names share its bit.
    #[test]
    fn the_names_filter_never_hides_a_field() {
        let names: Vec<String> = (0..40).map(|i| format!("X-Name-{i}")).collect();
        let text: String = names.iter().map(|n| format!("{n}: v\r\n")).collect();
        let (_, read) = both(&text);
        let mut fields = ReadFields::new(text.as_bytes(), read, Vec::new());
        fields.append(
            HeaderName::from_static("x-added"),
            HeaderValue::from_static("a"),
        );
        for name in names.iter().map(|n| n.to_ascii_lowercase()) {
            assert_eq!(fields.values(&name).collect::<Vec<_>>(), [b"v"], "{name}");
        }
        assert!(fields.contains("x-added") && !fields.contains("x-absent"));
        for name in names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .chain(["x-added".into()])
        {
            fields.remove(&name);
            assert!(!fields.contains(&name), "{name}");
        }
        assert_eq!(fields.iter().count(), 0);
    }

    #[test]
    fn both_heads_answer_and_change_alike() {
        let text = "Host: a\r\nCookie: x=1\r\ncookie: y=2\r\nX-Gone: 1\r\n";
        let (mut map, read) = both(text);
        let mut fields = ReadFields::new(text.as_bytes(), read, Vec::new());
        fn rules(f: &mut impl Fields) -> Vec<Vec<u8>> {
            let cookies = f.values("cookie").map(<[u8]>::to_vec).collect();
            assert!(f.contains("host") && !f.contains("via"));
            f.remove("x-gone");
            f.copy("host", HeaderName::from_static("x-forwarded-host"));
            f.copy("x-absent", HeaderName::from_static("x-copied"));
            f.append(
                HeaderName::from_static("via"),
                HeaderValue::from_static("1"),
            );
            f.append(
                HeaderName::from_static("via"),
                HeaderValue::from_static("2"),
            );
            f.insert(
                HeaderName::from_static("host"),
                HeaderValue::from_static("b"),
            );
            cookies
        }
        assert_eq!(rules(&mut map), [b"x=1".to_vec(), b"y=2".to_vec()]);
        assert_eq!(rules(&mut fields), [b"x=1".to_vec(), b"y=2".to_vec()]);
        let from_map = lines(
            map.iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        assert_eq!(from_map, lines(fields.iter()));
        assert_eq!(
            from_map,
            [
                "cookie: x=1",
                "cookie: y=2",
                "host: b",
                "via: 1",
                "via: 2",
                "x-forwarded-host: a"
            ]
        );
        // Repeated fields keep their order.
        let via: Vec<&[u8]> = fields.values("via").collect();
        assert_eq!(via, [b"1", b"2"]);
    }
}
