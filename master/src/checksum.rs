//! Checksummed framing for every record the master stores: [`seal`] prefixes a value with a format tag and
//! the CRC-32C (Castagnoli) of the bytes; [`open`] verifies it on every read and hands back the payload, or a
//! [`Corrupt`] error that the caller turns into "corrupt replica" (never serving the bytes).
//!
//! redb checksums its pages, but only verifies them during an integrity check or crash recovery: an
//! ordinary read returns whatever bytes are on disk. The frame closes that gap per record.
//!
//! Layout: `TAG (1 byte) ++ crc32c(payload) (4 bytes LE) ++ payload`. CRC-32C detects every burst error
//! up to 32 bits and all 1-3 bit errors in records far larger than ours. It is computed by the `crc32c`
//! crate, with the CPU's CRC instruction where there is one (SSE 4.2, ARMv8 CRC; the workspace forbids
//! `unsafe` in our own code, so the intrinsic lives there): the hand-written slicing-by-8 it replaced took
//! about a quarter of a follower's Raft thread under 500 single-finding clients (`perf`, 2026-12-04). The
//! sliced tables stay as the tests' reference.

/// First byte of every sealed record: lets a later format change be recognised instead of misread.
pub const TAG: u8 = 0xC1;
/// First byte of a record sealed with its table key ([`seal_keyed`]): the CRC covers the key too, so a
/// row whose key bytes changed (moved under another id) is caught like an altered value. The state
/// machine's tables write this form; [`open_keyed`] still reads [`TAG`] records (written before keys were
/// covered) until `store::open_store` reseals them.
pub const TAG_KEYED: u8 = 0xC2;
/// Bytes `seal` adds in front of the payload.
pub const OVERHEAD: usize = 5;

/// A record whose frame or checksum does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corrupt {
    #[error("record of {len} bytes is shorter than its {OVERHEAD}-byte frame")]
    Short { len: usize },
    #[error("record has format tag {found:#04x}, expected {TAG:#04x} or {TAG_KEYED:#04x}")]
    Tag { found: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x} over {len} bytes")]
    Mismatch { stored: u32, computed: u32, len: usize },
}

/// The framed form of `payload`.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + payload.len());
    seal_into(&mut out, payload);
    out
}

/// Appends the framed form of `payload` to `out` (reuses the caller's buffer).
pub fn seal_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(TAG);
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Verifies a framed record and returns its payload.
pub fn open(record: &[u8]) -> Result<&[u8], Corrupt> {
    if record.len() < OVERHEAD {
        return Err(Corrupt::Short { len: record.len() });
    }
    let (head, payload) = record.split_at(OVERHEAD);
    if head[0] != TAG {
        return Err(Corrupt::Tag { found: head[0] });
    }
    let stored = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let computed = crc32c(payload);
    if stored != computed {
        return Err(Corrupt::Mismatch { stored, computed, len: payload.len() });
    }
    Ok(payload)
}

/// The framed form of `payload` stored under the table key `key` (the CRC covers the key's length, the key
/// and the payload; the key itself is not stored in the frame: redb holds it).
pub fn seal_keyed(key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + payload.len());
    seal_keyed_into(&mut out, key, payload);
    out
}

/// The keyed frame of the payload `write` appends to an empty buffer, written in place: the same bytes
/// as [`seal_keyed`] of that payload, without encoding it into one buffer and copying it into another
/// (every object a finding changes is sealed this way on every member).
pub fn seal_keyed_with(key: &[u8], write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = vec![TAG_KEYED, 0, 0, 0, 0];
    write(&mut out);
    let crc = keyed_crc(key, &out[OVERHEAD..]).to_le_bytes();
    out[1..OVERHEAD].copy_from_slice(&crc);
    out
}

/// Appends the keyed frame of `payload` to `out`.
pub fn seal_keyed_into(out: &mut Vec<u8>, key: &[u8], payload: &[u8]) {
    out.push(TAG_KEYED);
    out.extend_from_slice(&keyed_crc(key, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Verifies a record read under the table key `key` and returns its payload: a [`TAG_KEYED`] frame must
/// match the key and the payload; a [`TAG`] frame (written before keys were covered) the payload alone.
pub fn open_keyed<'a>(key: &[u8], record: &'a [u8]) -> Result<&'a [u8], Corrupt> {
    match record.first() {
        Some(&TAG) => open(record),
        Some(&TAG_KEYED) if record.len() >= OVERHEAD => {
            let (head, payload) = record.split_at(OVERHEAD);
            let stored = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let computed = keyed_crc(key, payload);
            if stored != computed {
                return Err(Corrupt::Mismatch { stored, computed, len: payload.len() });
            }
            Ok(payload)
        }
        Some(&found) if record.len() >= OVERHEAD => Err(Corrupt::Tag { found }),
        _ => Err(Corrupt::Short { len: record.len() }),
    }
}

/// Whether `record` is in the frame written before keys were covered ([`TAG`]).
pub fn is_unkeyed(record: &[u8]) -> bool {
    record.first() == Some(&TAG)
}

/// CRC-32C over `len(key)` (4 bytes LE), the key and the payload: the length keeps `("ab", "c")` and
/// `("a", "bc")` apart.
fn keyed_crc(key: &[u8], payload: &[u8]) -> u32 {
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes();
    !update(update(update(!0, &len), key), payload)
}

/// Reflected Castagnoli polynomial.
#[cfg(test)]
const POLY: u32 = 0x82F6_3B78;

/// Slicing-by-8 tables: `TABLES[0]` is the classic byte table, `TABLES[k][b]` the CRC of byte `b`
/// followed by `k` zero bytes (the tests' reference).
#[cfg(test)]
static TABLES: [[u32; 256]; 8] = make_tables();

#[cfg(test)]
const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// CRC-32C of `data` (as iSCSI, ext4 and etcd's WAL use it).
pub fn crc32c(data: &[u8]) -> u32 {
    !update(!0, data)
}

/// The CRC-32C of `a ++ data`, given `crc` = the CRC-32C of `a` (0 for nothing): checksums a stream
/// chunk by chunk (snapshot files, `raft::snapfile`).
pub fn crc32c_extend(crc: u32, data: &[u8]) -> u32 {
    !update(!crc, data)
}

/// Feed `data` into a running (pre-inverted) CRC-32C state.
fn update(crc: u32, data: &[u8]) -> u32 {
    !::crc32c::crc32c_append(!crc, data)
}

/// [`update`] by slicing-by-8 tables: the reference the crate's result is checked against.
#[cfg(test)]
fn update_sliced(mut crc: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference, to check the sliced tables against.
    fn slow(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn known_vectors() {
        // RFC 3720 (iSCSI) appendix B.4 and the common check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
        for len in 0..100usize {
            let d: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            assert_eq!(crc32c(&d), slow(&d), "len {len}");
        }
    }

    #[test]
    fn the_crate_agrees_with_the_sliced_tables_and_the_bitwise_reference() {
        // Records written by the hand-written CRC must verify with the crate's: same value for every length
        // and alignment (the hardware path works in 8-byte words and 3-way interleaved blocks), including
        // running states fed chunk by chunk.
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for (start, len) in [(0, 0), (1, 1), (3, 7), (5, 64), (7, 255), (1, 1024), (0, 4096), (13, 4987)] {
            let d = &data[start..start + len];
            assert_eq!(!update(!0, d), !update_sliced(!0, d), "start {start} len {len}");
            assert_eq!(crc32c(d), slow(d), "start {start} len {len}");
            let (a, b) = d.split_at(len / 3);
            assert_eq!(crc32c_extend(crc32c(a), b), crc32c(d), "extend, start {start} len {len}");
            assert_eq!(update(update(!0, a), b), update_sliced(update_sliced(!0, a), b));
        }
        assert_eq!(
            keyed_crc(b"object/x", b"payload"),
            !update_sliced(update_sliced(update_sliced(!0, &8u32.to_le_bytes()), b"object/x"), b"payload")
        );
    }

    #[test]
    fn seal_open_round_trip_and_every_flip_is_caught() {
        let payload = b"seq=001234 disk/host-017/sdb".to_vec();
        let sealed = seal(&payload);
        assert_eq!(sealed.len(), payload.len() + OVERHEAD);
        assert_eq!(open(&sealed), Ok(&payload[..]));
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(open(&bad).is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
        // The reproduction: same length, different digits.
        let mut swapped = sealed.clone();
        let at = sealed.windows(6).position(|w| w == b"001234").expect("marker");
        swapped[at..at + 6].copy_from_slice(b"009999");
        assert!(matches!(open(&swapped), Err(Corrupt::Mismatch { .. })));
        assert_eq!(open(&sealed[..3]), Err(Corrupt::Short { len: 3 }));
        let mut tag = sealed;
        tag[0] = 0;
        assert_eq!(open(&tag), Err(Corrupt::Tag { found: 0 }));
        assert_eq!(open(&seal(b"")), Ok(&b""[..]));
    }

    #[test]
    fn keyed_seal_covers_the_key_and_still_reads_the_old_frame() {
        let payload = b"{\"seq\":1234}".to_vec();
        let key = b"disk/host-017/sdb";
        let sealed = seal_keyed(key, &payload);
        assert_eq!(sealed.len(), payload.len() + OVERHEAD);
        assert_eq!(
            seal_keyed_with(key, |b| b.extend_from_slice(&payload)),
            sealed,
            "written in place, the same"
        );
        assert_eq!(seal_keyed_with(key, |_| {}), seal_keyed(key, b""));
        assert_eq!(open_keyed(key, &sealed), Ok(&payload[..]));
        // Every flipped bit of the key (a row moved under another id) and of the record is caught.
        for i in 0..key.len() {
            for bit in 0..8 {
                let mut k = key.to_vec();
                k[i] ^= 1 << bit;
                assert!(
                    matches!(open_keyed(&k, &sealed), Err(Corrupt::Mismatch { .. })),
                    "key bit {bit} of byte {i}"
                );
            }
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(open_keyed(key, &bad).is_err(), "byte {i}");
        }
        // The length is covered: the same bytes split differently between key and payload differ.
        assert!(open_keyed(b"disk/host-017/sd", &seal_keyed(b"disk/host-017/sdb", b"x")).is_err());
        // The old frame (no key) still reads, and is told apart.
        let old = seal(&payload);
        assert_eq!(open_keyed(key, &old), Ok(&payload[..]));
        assert!(is_unkeyed(&old) && !is_unkeyed(&sealed));
        assert_eq!(open_keyed(key, &[0u8; 9]), Err(Corrupt::Tag { found: 0 }));
        assert_eq!(open_keyed(key, &[TAG_KEYED, 1]), Err(Corrupt::Short { len: 2 }));
        assert_eq!(open_keyed(b"", &seal_keyed(b"", b"")), Ok(&b""[..]));
    }
}
