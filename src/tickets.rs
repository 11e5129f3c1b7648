//! Session-ticket keys from a file, shared by every TLS listener that reads it (chapter 13).
//!
//! A TLS 1.3 server that resumes sessions hands the client a *ticket*: the session's secrets,
//! encrypted under a key only the server knows. Next visit the client sends the ticket back,
//! the server decrypts it, and both skip the key exchange and the certificate signature, the
//! dearest part of a handshake. rustls' own ticketer draws a random key per process. That is
//! right for one process and wrong for a farm: behind a layer-4 balancer a returning client
//! lands on *another* offloader, which cannot read the ticket, and pays a full handshake.
//!
//! So every offloader reads the same key file, as nginx's `ssl_session_ticket_key` and
//! HAProxy's `tls-ticket-keys` do. The file holds one key per line, 96 hex digits (48 random
//! bytes: a 16-byte name sent in the clear so the server can find the key, and a 32-byte
//! AES-256-GCM key), oldest first:
//!
//! ```text
//! # openssl rand -hex 48 >> tickets.key
//! 3c9f…   older: still decrypts tickets issued before the last rotation
//! 8a41…   current: encrypts new tickets (the line before the last)
//! d702…   next: decrypts only, so it is everywhere before anyone encrypts with it
//! ```
//!
//! The *next* key is what makes rotation safe across many processes: rotate by appending a
//! fresh key and dropping the first, then reload each process (SIGHUP) in any order. A process
//! already rotated encrypts with a key every other process has held as *next* since the
//! previous rotation, so no ticket is ever unreadable anywhere. With a single line, that key
//! does everything.
//!
//! The file must be readable by its owner only ([`files::read_private`]), and no error ever
//! prints a key: whoever has the key can decrypt every recorded session that used its tickets.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::server::ProducesTickets;

use crate::files;

/// Bytes of a key's name, sent in the clear at the front of each ticket.
const NAME_LEN: usize = 16;
/// Bytes of one key as written in the file: the name, then the AES-256 key.
const KEY_LEN: usize = NAME_LEN + 32;
/// AES-GCM's authentication tag.
const TAG_LEN: usize = 16;
/// The most keys a file may hold: more is a rotation script that forgot to drop the oldest.
const MAX_KEYS: usize = 16;

/// The lifetime clients are told a ticket has. Rotation, not this hint, is what bounds a key's
/// exposure; six hours is what rustls' own ticketer uses between key changes.
pub const LIFETIME_SECS: u32 = 6 * 60 * 60;

/// The keys of one ticket file: all decrypt, one encrypts.
pub struct TicketKeys {
    keys: Vec<([u8; NAME_LEN], LessSafeKey)>,
    /// Index of the key that encrypts: the one before the last (the last is *next*).
    current: usize,
    random: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    // Never the keys themselves: a `{:?}` in a log line must not leak them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .field("current", &self.current)
            .finish()
    }
}

impl TicketKeys {
    /// Reads the key file at `path` (owner-only, at most [`files::MAX_SECRET`] bytes).
    pub fn load(path: &Path) -> anyhow::Result<Arc<TicketKeys>> {
        let bytes = files::read_private(path, "ticket key file", files::MAX_SECRET)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            anyhow::anyhow!(
                "ticket key file {}: not text (one key per line, 96 hex digits)",
                path.display()
            )
        })?;
        TicketKeys::parse(text)
            .map(Arc::new)
            .map_err(|why| anyhow::anyhow!("ticket key file {}: {why}", path.display()))
    }

    /// Parses the file's text. The error names a line, never its content.
    pub fn parse(text: &str) -> Result<TicketKeys, String> {
        let mut keys: Vec<([u8; NAME_LEN], LessSafeKey)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = hex(line).ok_or_else(|| {
                format!(
                    "line {}: a key is {} hex digits (`openssl rand -hex {KEY_LEN}`), and this \
                     line is not",
                    n + 1,
                    2 * KEY_LEN
                )
            })?;
            let mut name = [0u8; NAME_LEN];
            name.copy_from_slice(&bytes[..NAME_LEN]);
            if keys.iter().any(|(other, _)| *other == name) {
                return Err(format!("line {}: the same key twice", n + 1));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes[NAME_LEN..])
                .map_err(|_| format!("line {}: not a usable AES-256 key", n + 1))?;
            keys.push((name, LessSafeKey::new(key)));
        }
        match keys.len() {
            0 => Err(format!(
                "no key (add one: `openssl rand -hex {KEY_LEN} > FILE; chmod 600 FILE`)"
            )),
            n if n > MAX_KEYS => Err(format!(
                "{n} keys; at most {MAX_KEYS} (drop the oldest when you add one)"
            )),
            n => Ok(TicketKeys {
                keys,
                current: n.saturating_sub(2),
                random: SystemRandom::new(),
            }),
        }
    }

    /// How many keys the file held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a file without a key does not load.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// `s` as exactly [`KEY_LEN`] bytes of hex, or `None`.
fn hex(s: &str) -> Option<[u8; KEY_LEN]> {
    let s = s.as_bytes();
    if s.len() != 2 * KEY_LEN {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A ticket is `name ‖ nonce ‖ AES-256-GCM(session) ‖ tag`, the name also authenticated as
/// associated data, so a ticket cannot be moved from one key to another.
impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = &self.keys[self.current];
        // Random 96-bit nonces: safe for about 2^32 tickets per key, and a key is rotated long
        // before that. A counter would need to be shared by every process of the farm.
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name),
            &mut sealed,
        )
        .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        // Whatever a client sends: every length is checked before it is sliced.
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(n, _)| n == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(name), &mut buf).ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        format!("{byte:02x}").repeat(KEY_LEN)
    }

    #[test]
    fn tickets_round_trip_and_resist_tampering() {
        let keys = TicketKeys::parse(&key(1)).unwrap();
        let ticket = keys.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..NAME_LEN], &[1; NAME_LEN]);
        assert_eq!(keys.decrypt(&ticket).unwrap(), b"session state");
        for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..len]), None);
        }
        // Two tickets for the same state differ: a fresh nonce each time.
        assert_ne!(keys.encrypt(b"session state").unwrap(), ticket);
    }

    /// The rotation the module describes: a process that has rotated and one that has not
    /// read each other's tickets, in both directions.
    #[test]
    fn processes_one_rotation_apart_read_each_others_tickets() {
        let before = TicketKeys::parse(&format!("{}\n{}\n{}\n", key(1), key(2), key(3))).unwrap();
        let after = TicketKeys::parse(&format!("{}\n{}\n{}\n", key(2), key(3), key(4))).unwrap();
        let old = before.encrypt(b"a").unwrap();
        let new = after.encrypt(b"b").unwrap();
        assert_eq!(
            &old[..NAME_LEN],
            &[2; NAME_LEN],
            "the line before the last encrypts"
        );
        assert_eq!(&new[..NAME_LEN], &[3; NAME_LEN]);
        assert_eq!(after.decrypt(&old).unwrap(), b"a");
        assert_eq!(before.decrypt(&new).unwrap(), b"b");
        // Two rotations on, the oldest key is gone and so are its tickets.
        let later = TicketKeys::parse(&format!("{}\n{}\n{}\n", key(4), key(5), key(6))).unwrap();
        assert_eq!(later.decrypt(&old), None);
        // One key does everything.
        let one = TicketKeys::parse(&key(9)).unwrap();
        assert_eq!(&one.encrypt(b"c").unwrap()[..NAME_LEN], &[9; NAME_LEN]);
    }

    #[test]
    fn bad_files_are_refused_by_line_without_showing_the_key() {
        let secret = key(7);
        for (text, want) in [
            (String::new(), "no key"),
            ("# only a comment\n".to_owned(), "no key"),
            (secret[..90].to_owned(), "line 1: a key is 96 hex digits"),
            (format!("# c\n{}zz", &secret[..94]), "line 2:"),
            (
                format!("{secret}\n{secret}\n"),
                "line 2: the same key twice",
            ),
            ((1..=17).map(|b| key(b) + "\n").collect(), "17 keys"),
        ] {
            let e = TicketKeys::parse(&text).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
            assert!(!e.contains(&secret[..20]), "{e}");
        }
        // Whitespace and upper case are fine.
        assert_eq!(
            TicketKeys::parse(&format!("  {}  \n", key(0xab).to_uppercase()))
                .unwrap()
                .len(),
            1
        );
    }
}
