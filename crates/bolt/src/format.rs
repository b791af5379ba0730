//! The BoltDB on-disk format (etcd-io/bbolt 1.3.x), parsed from bytes.
//!
//! Every integer is little-endian (bbolt writes native order; every
//! supported platform is little-endian). Nothing here trusts the input:
//! every offset and length is checked against the bytes at hand, and a
//! failure is a reason string the caller turns into an error naming the
//! page.
//!
//! ```text
//! page header (16 B)   id u64 | flags u16 | count u16 | overflow u32
//!                      a page spans (1 + overflow) * page_size bytes
//! flags                branch 0x01, leaf 0x02, meta 0x04, freelist 0x10
//! meta (pages 0 and 1, at offset 16, 64 B)
//!                      magic u32 = 0xED0CDAED | version u32 = 2 | page_size u32
//!                      | flags u32 | root bucket {root pgid u64, sequence u64}
//!                      | freelist pgid u64 | high-water mark pgid u64
//!                      | txid u64 | checksum u64 = FNV-1a 64 of the 56 bytes before
//!                      transaction t writes its meta to page t % 2; the
//!                      current meta is the valid one with the higher txid
//! branch element (16 B) pos u32 | ksize u32 | pgid u64
//! leaf element (16 B)   flags u32 (0x01: a bucket) | pos u32 | ksize u32 | vsize u32
//!                      key at element offset + pos, value right after it
//! bucket value          root pgid u64 | sequence u64; root 0 means inline:
//!                      a whole leaf page (header + elements) follows at byte 16
//! ```

pub(crate) const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
pub(crate) const META_SIZE: usize = 64;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

pub(crate) const FLAG_BRANCH: u16 = 0x01;
pub(crate) const FLAG_LEAF: u16 = 0x02;
const LEAF_BUCKET: u32 = 0x01;

/// Page sizes bbolt can use (it probes 1 KiB << 0..=14 for the second meta).
pub(crate) const PAGE_SIZES: std::ops::RangeInclusive<u32> = 10..=24;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// FNV-1a, 64 bits (bbolt's meta checksum).
pub(crate) fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A validated meta page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    /// The root bucket's root page.
    pub root: u64,
    /// Pages `0..hwm` are in use by the file.
    pub hwm: u64,
    pub txid: u64,
}

/// Why 64 bytes are not a valid meta.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetaProblem {
    NotBolt(&'static str),
    Invalid(String),
}

/// Parses the meta struct in `b` (the 64 bytes after a page header).
pub(crate) fn parse_meta(b: &[u8]) -> Result<Meta, MetaProblem> {
    let field = |at| u64_at(b, at).ok_or(MetaProblem::NotBolt("too short for a meta page"));
    let magic = u32_at(b, 0).ok_or(MetaProblem::NotBolt("too short for a meta page"))?;
    if magic != MAGIC {
        return Err(MetaProblem::NotBolt("no Bolt magic number"));
    }
    let version = u32_at(b, 4).unwrap_or(0);
    if version != VERSION {
        return Err(MetaProblem::Invalid(format!(
            "meta has format version {version}, not {VERSION}"
        )));
    }
    let sum = field(56)?;
    if fnv1a64(&b[..56]) != sum {
        return Err(MetaProblem::Invalid("meta checksum mismatch".into()));
    }
    let page_size = u32_at(b, 8).unwrap_or(0);
    if !page_size.is_power_of_two() || !PAGE_SIZES.contains(&page_size.trailing_zeros()) {
        return Err(MetaProblem::Invalid(format!(
            "meta has an impossible page size {page_size}"
        )));
    }
    let meta = Meta {
        page_size,
        root: field(16)?,
        hwm: field(40)?,
        txid: field(48)?,
    };
    if meta.root < 2 || meta.root >= meta.hwm {
        return Err(MetaProblem::Invalid(format!(
            "root page {} lies outside the file's {} pages",
            meta.root, meta.hwm
        )));
    }
    Ok(meta)
}

/// A parsed page header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

pub(crate) fn header(page: &[u8]) -> Option<Header> {
    Some(Header {
        flags: u16_at(page, 8)?,
        count: u16_at(page, 10)?,
        overflow: u32_at(page, 12)?,
    })
}

/// One element of a leaf page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeafElem<'a> {
    pub is_bucket: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Where an element's key (and value) lie: at the element's own offset
/// plus `pos`, all within `page`.
fn element_span(page: &[u8], elem_at: usize, pos: u32, len: u64) -> Result<usize, String> {
    let start = elem_at as u64 + u64::from(pos);
    if start + len > page.len() as u64 {
        return Err(format!(
            "element at byte {elem_at} points to bytes {start}..{} past the page's {} bytes",
            start + len,
            page.len()
        ));
    }
    Ok(start as usize)
}

fn elements_fit(page: &[u8], count: u16) -> Result<(), String> {
    let need = PAGE_HEADER + usize::from(count) * ELEMENT;
    if need > page.len() {
        return Err(format!(
            "{count} elements need {need} bytes but the page has {}",
            page.len()
        ));
    }
    Ok(())
}

/// The elements of a leaf page (`page` is its whole span, header included),
/// checked one at a time as they are taken.
pub(crate) fn leaf_elems(
    page: &[u8],
    count: u16,
) -> Result<impl Iterator<Item = Result<LeafElem<'_>, String>>, String> {
    elements_fit(page, count)?;
    let elems = &page[PAGE_HEADER..PAGE_HEADER + usize::from(count) * ELEMENT];
    Ok(elems.chunks_exact(ELEMENT).enumerate().map(move |(i, e)| {
        let at = PAGE_HEADER + i * ELEMENT;
        let word = |w: usize| u32::from_le_bytes([e[w], e[w + 1], e[w + 2], e[w + 3]]);
        let (flags, pos, ksize, vsize) = (word(0), word(4), word(8), word(12));
        let start = element_span(page, at, pos, u64::from(ksize) + u64::from(vsize))?;
        let kend = start + ksize as usize;
        Ok(LeafElem {
            is_bucket: flags & LEAF_BUCKET != 0,
            key: &page[start..kend],
            value: &page[kend..kend + vsize as usize],
        })
    }))
}

/// The child page ids of a branch page.
pub(crate) fn branch_children(page: &[u8], count: u16) -> Result<Vec<u64>, String> {
    elements_fit(page, count)?;
    if count == 0 {
        return Err("branch page has no elements".into());
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for i in 0..usize::from(count) {
        let at = PAGE_HEADER + i * ELEMENT;
        let pos = u32_at(page, at).unwrap_or(0);
        let ksize = u32_at(page, at + 4).unwrap_or(0);
        element_span(page, at, pos, u64::from(ksize))?;
        out.push(u64_at(page, at + 8).unwrap_or(0));
    }
    Ok(out)
}

/// A bucket entry's value: its root page, or its inline page.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BucketRef<'a> {
    Root(u64),
    Inline(&'a [u8]),
}

pub(crate) fn bucket_ref(value: &[u8]) -> Result<BucketRef<'_>, String> {
    let root = u64_at(value, 0).ok_or_else(|| {
        format!(
            "bucket value has {} bytes, fewer than the 16 of a bucket header",
            value.len()
        )
    })?;
    if value.len() < 16 {
        return Err(format!(
            "bucket value has {} bytes, fewer than the 16 of a bucket header",
            value.len()
        ));
    }
    if root == 0 {
        Ok(BucketRef::Inline(&value[16..]))
    } else {
        Ok(BucketRef::Root(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_bytes(root: u64, hwm: u64, txid: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&4096u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&root.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&hwm.to_le_bytes());
        b.extend_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn meta_checks_magic_checksum_and_bounds() {
        let good = meta_bytes(3, 4, 7);
        assert_eq!(
            parse_meta(&good),
            Ok(Meta {
                page_size: 4096,
                root: 3,
                hwm: 4,
                txid: 7
            })
        );
        let mut bad = good.clone();
        bad[50] ^= 1;
        assert!(matches!(parse_meta(&bad), Err(MetaProblem::Invalid(r)) if r.contains("checksum")));
        assert!(matches!(
            parse_meta(&[0u8; 64]),
            Err(MetaProblem::NotBolt(_))
        ));
        assert!(
            matches!(parse_meta(&meta_bytes(9, 4, 1)), Err(MetaProblem::Invalid(r)) if r.contains("root page 9"))
        );
        assert!(matches!(
            parse_meta(&good[..20]),
            Err(MetaProblem::NotBolt(_))
        ));
    }

    #[test]
    fn elements_out_of_the_page_are_refused() {
        let mut page = vec![0u8; 64];
        // One leaf element whose key runs past the end.
        page[PAGE_HEADER + 4..PAGE_HEADER + 8].copy_from_slice(&16u32.to_le_bytes());
        page[PAGE_HEADER + 8..PAGE_HEADER + 12].copy_from_slice(&100u32.to_le_bytes());
        let first = leaf_elems(&page, 1).unwrap().next().unwrap();
        assert!(first.unwrap_err().contains("past the page"));
        assert!(leaf_elems(&page, 9)
            .err()
            .unwrap()
            .contains("elements need"));
        assert!(branch_children(&page, 0).is_err());
        assert!(bucket_ref(&[0u8; 8]).is_err());
    }
}
