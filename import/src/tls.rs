//! The server name (SNI) of a TLS ClientHello, from the first bytes a client
//! sends. The hello may span several TCP segments and several TLS records.

/// What the first client bytes of a connection say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// A ClientHello with this server name.
    Sni(String),
    /// A ClientHello without a server name extension.
    NoSni,
    /// Looks like TLS, but the ClientHello is not complete yet.
    NeedMore,
    /// Not a TLS ClientHello.
    NotTls,
}

/// Bytes a ClientHello may reasonably take (post-quantum key shares make
/// them 1.5–2 KB); past that we give up.
pub const MAX_HELLO: usize = 16 * 1024;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|s| (usize::from(s[0]) << 16) | (usize::from(s[1]) << 8) | usize::from(s[2]))
    }
}

/// Parses the start of a client's byte stream.
pub fn client_hello(stream: &[u8]) -> Hello {
    // Reassemble the handshake layer from consecutive TLS records.
    let mut hs = Vec::new();
    let mut at = 0usize;
    let mut want: Option<usize> = None;
    loop {
        if let Some(w) = want {
            if hs.len() >= w {
                break;
            }
        }
        let Some(hdr) = stream.get(at..at + 5) else {
            let first_byte_wrong = stream.get(at).is_some_and(|b| *b != 0x16);
            return if first_byte_wrong {
                Hello::NotTls
            } else {
                Hello::NeedMore
            };
        };
        if hdr[0] != 0x16 || hdr[1] != 0x03 || hdr[2] > 0x04 {
            return Hello::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 || len > 18 * 1024 {
            return Hello::NotTls;
        }
        let Some(body) = stream.get(at + 5..at + 5 + len) else {
            // Take what there is; the rest may come in the next segment.
            let partial = &stream[at + 5..];
            hs.extend_from_slice(partial);
            if hs.len() >= 4 && hs[0] != 1 {
                return Hello::NotTls;
            }
            if want.is_none() && hs.len() >= 4 {
                want = Some(
                    4 + ((usize::from(hs[1]) << 16)
                        | (usize::from(hs[2]) << 8)
                        | usize::from(hs[3])),
                );
            }
            if want.is_some_and(|w| hs.len() >= w) {
                break;
            }
            return Hello::NeedMore;
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Hello::NotTls;
            }
            if want.is_none() {
                want = Some(
                    4 + ((usize::from(hs[1]) << 16)
                        | (usize::from(hs[2]) << 8)
                        | usize::from(hs[3])),
                );
            }
        }
    }
    parse_hello(&hs)
}

fn parse_hello(hs: &[u8]) -> Hello {
    let mut c = Cursor { b: hs, at: 0 };
    let parsed = (|| -> Option<Hello> {
        if c.u8()? != 1 {
            return Some(Hello::NotTls);
        }
        let len = c.u24()?;
        let body = c.take(len)?;
        let mut c = Cursor { b: body, at: 0 };
        c.take(2)?; // client_version
        c.take(32)?; // random
        let sid = usize::from(c.u8()?);
        c.take(sid)?;
        let suites = usize::from(c.u16()?);
        c.take(suites)?;
        let comp = usize::from(c.u8()?);
        c.take(comp)?;
        if c.at == body.len() {
            return Some(Hello::NoSni);
        }
        let ext_len = usize::from(c.u16()?);
        let exts = c.take(ext_len)?;
        let mut e = Cursor { b: exts, at: 0 };
        while e.at < exts.len() {
            let ty = e.u16()?;
            let l = usize::from(e.u16()?);
            let data = e.take(l)?;
            if ty != 0 {
                continue;
            }
            let mut s = Cursor { b: data, at: 0 };
            let list = usize::from(s.u16()?);
            let list = s.take(list)?;
            let mut s = Cursor { b: list, at: 0 };
            while s.at < list.len() {
                let kind = s.u8()?;
                let l = usize::from(s.u16()?);
                let name = s.take(l)?;
                if kind == 0 {
                    let name = std::str::from_utf8(name).ok()?;
                    let ok = !name.is_empty()
                        && name.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'
                        });
                    return Some(if ok {
                        Hello::Sni(name.trim_end_matches('.').to_ascii_lowercase())
                    } else {
                        Hello::NotTls
                    });
                }
            }
        }
        Some(Hello::NoSni)
    })();
    parsed.unwrap_or(Hello::NotTls)
}

/// Builds a minimal TLS 1.2 ClientHello record carrying `sni` (for tests and
/// synthetic captures).
pub fn build_client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut sni_ext = Vec::new();
    let list_len = 3 + name.len();
    sni_ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut exts = Vec::new();
    // A padding-like extension first, so the SNI is not at a fixed offset.
    exts.extend_from_slice(&[0x00, 0x17, 0x00, 0x00]);
    exts.extend_from_slice(&[0x00, 0x00]);
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0xc0, 0x2f]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    let l = body.len() as u32;
    hs.extend_from_slice(&l.to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sni_whole_and_in_pieces() {
        let h = build_client_hello("Content.DropboxAPI.com");
        assert_eq!(
            client_hello(&h),
            Hello::Sni("content.dropboxapi.com".into())
        );
        for cut in [1, 3, 5, 20, h.len() - 1] {
            assert_eq!(client_hello(&h[..cut]), Hello::NeedMore, "cut {cut}");
        }
        // The same handshake split over two TLS records.
        let hs = &h[5..];
        let (a, b) = hs.split_at(30);
        let mut two = vec![0x16, 0x03, 0x01];
        two.extend_from_slice(&(a.len() as u16).to_be_bytes());
        two.extend_from_slice(a);
        two.extend_from_slice(&[0x16, 0x03, 0x01]);
        two.extend_from_slice(&(b.len() as u16).to_be_bytes());
        two.extend_from_slice(b);
        assert_eq!(
            client_hello(&two),
            Hello::Sni("content.dropboxapi.com".into())
        );
    }

    #[test]
    fn rejects_other_protocols() {
        assert_eq!(client_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(
            client_hello(&[0x17, 0x03, 0x03, 0, 5, 1, 2, 3, 4, 5]),
            Hello::NotTls
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = client_hello(&b);
        }

        #[test]
        fn never_panics_on_mutated_hellos(idx in 0usize..200, val in proptest::num::u8::ANY, cut in 0usize..200) {
            let mut h = build_client_hello("www.example.com");
            let i = idx % h.len();
            h[i] = val;
            let c = cut % (h.len() + 1);
            let _ = client_hello(&h[..c]);
        }
    }
}
