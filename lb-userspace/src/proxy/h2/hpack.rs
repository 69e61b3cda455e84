//! HPACK decoding (RFC 7541): a client's header blocks into fields, with the connection's
//! dynamic table. Fields are handed out as borrowed bytes, decoded into buffers this decoder
//! keeps, so a request's fields cost no allocation unless they enter the table.
//!
//! Huffman-coded strings are decoded four bits at a time with a table built once from the
//! code's lengths (the code is canonical: lengths alone define it).

use std::{collections::VecDeque, sync::LazyLock};

/// Why a header block cannot be decoded: a connection error (`COMPRESSION_ERROR`), since
/// the table's state is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer too large")]
    Overflow,
    #[error("an index past the tables")]
    BadIndex,
    #[error("a bad Huffman string")]
    BadHuffman,
    #[error("a table size update past the limit, or after a field")]
    BadSizeUpdate,
}

/// The static table (RFC 7541 appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
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

/// One dynamic table entry: its name and value in one allocation.
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    /// Its size as the table counts it (section 4.1).
    fn size(&self) -> usize {
        self.bytes.len() + 32
    }
}

pub(super) struct Decoder {
    /// Newest first: index 62 is the front.
    table: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// The most a size update may set (this side's SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// Where a literal field's name is.
enum Name {
    Indexed(usize),
    /// In the decoder's `name` buffer.
    Literal,
}

impl Decoder {
    /// A decoder whose table may hold `allowed` bytes (4096 unless announced otherwise).
    pub(super) fn new(allowed: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: allowed,
            allowed,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes `block`, handing each field to `field` in order.
    pub(super) fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut first = true;
        while let Some(&byte) = block.first() {
            if byte & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.get(index)?;
                field(name, value);
            } else if byte & 0xc0 == 0x40 {
                self.literal(&mut block, 6, true, &mut field)?;
            } else if byte & 0xe0 == 0x20 {
                let size = integer(&mut block, 5)?;
                if !first || size > self.allowed {
                    return Err(HpackError::BadSizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001): the same to a decoder.
                self.literal(&mut block, 4, false, &mut field)?;
            }
            first = false;
        }
        Ok(())
    }

    fn literal(
        &mut self,
        block: &mut &[u8],
        prefix: u8,
        indexing: bool,
        field: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let name = match integer(block, prefix)? {
            0 => {
                string(block, &mut self.name)?;
                Name::Literal
            }
            index => {
                // Checked now: the field is wrong whatever its value.
                self.get(index)?;
                Name::Indexed(index)
            }
        };
        string(block, &mut self.value)?;
        let name: &[u8] = match name {
            Name::Literal => &self.name,
            Name::Indexed(index) => self.get(index)?.0,
        };
        if !indexing {
            field(name, &self.value);
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(name.len() + self.value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&self.value);
        let entry = Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        };
        field(entry.name(), entry.value());
        self.insert(entry);
        Ok(())
    }

    /// The field at `index` (1-based: the static table, then the dynamic one).
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|e| (e.name(), e.value()))
                .ok_or(HpackError::BadIndex),
        }
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.max_size {
            // Larger than the table: the table ends up empty (section 4.4).
            self.evict(self.max_size);
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(entry);
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= old.size(),
                None => {
                    self.size = 0;
                    return;
                }
            }
        }
    }
}

/// An integer with a `prefix`-bit prefix (section 5.1), taken off the front of `block`.
fn integer(block: &mut &[u8], prefix: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0;
        loop {
            let (&byte, more) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = more;
            // 28 bits are more than any length or index a block this size can hold.
            if shift > 21 {
                return Err(HpackError::Overflow);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// A string literal (section 5.2) into `out`, taken off the front of `block`.
fn string(block: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    out.clear();
    if huffman {
        huffman_decode(bytes, out)
    } else {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

/// Each symbol's code length (RFC 7541 appendix B), symbol 256 being EOS.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// Each symbol's code, assigned canonically from the lengths: shorter codes first, and
/// within a length in symbol order.
fn codes() -> [u32; 257] {
    let mut codes = [0u32; 257];
    let mut code = 0u32;
    for len in 1..=30u8 {
        for (symbol, _) in CODE_LENGTHS.iter().enumerate().filter(|(_, l)| **l == len) {
            codes[symbol] = code;
            code += 1;
        }
        code <<= 1;
    }
    codes
}

/// One step of the decoder: from a state (a node of the code's tree), four bits lead to
/// `next`, having completed `symbol` on the way (at most one: no code is shorter than 5
/// bits).
#[derive(Clone, Copy, Default)]
struct Step {
    next: u16,
    symbol: u16,
    /// `symbol` is set; `FAIL`: the bits spell EOS, which no string may contain.
    flags: u8,
}

const EMIT: u8 = 1;
const FAIL: u8 = 2;

struct Machine {
    steps: Vec<[Step; 16]>,
    /// Whether a string may end in this state: the bits since the last symbol are fewer
    /// than 8 and all ones (a prefix of EOS, section 5.2).
    accepting: Vec<bool>,
}

/// The code's tree: internal nodes, each child either a node or a leaf (`LEAF | symbol`).
const LEAF: u32 = 1 << 16;

fn tree() -> Vec<[u32; 2]> {
    let mut nodes: Vec<[u32; 2]> = vec![[0, 0]];
    let codes = codes();
    for (symbol, (&code, &len)) in codes.iter().zip(&CODE_LENGTHS).enumerate() {
        let mut node = 0usize;
        for bit in (0..len).rev() {
            let side = ((code >> bit) & 1) as usize;
            if bit == 0 {
                nodes[node][side] = LEAF | symbol as u32;
            } else {
                if nodes[node][side] == 0 {
                    nodes.push([0, 0]);
                    nodes[node][side] = (nodes.len() - 1) as u32;
                }
                node = nodes[node][side] as usize;
            }
        }
    }
    nodes
}

static MACHINE: LazyLock<Machine> = LazyLock::new(|| {
    let nodes = tree();
    // Depth and all-ones-ness of each node, by walking down from the root.
    let mut accepting = vec![false; nodes.len()];
    let mut stack = vec![(0usize, 0u32, true)];
    while let Some((node, depth, ones)) = stack.pop() {
        accepting[node] = ones && depth < 8;
        for (side, &child) in nodes[node].iter().enumerate() {
            if child & LEAF == 0 && child != 0 {
                stack.push((child as usize, depth + 1, ones && side == 1));
            }
        }
    }
    let steps = (0..nodes.len())
        .map(|state| {
            let mut row = [Step::default(); 16];
            for (nibble, step) in row.iter_mut().enumerate() {
                let mut node = state;
                for bit in (0..4).rev() {
                    let child = nodes[node][(nibble >> bit) & 1];
                    if child & LEAF != 0 {
                        let symbol = child & !LEAF;
                        if symbol == 256 {
                            step.flags |= FAIL;
                        }
                        step.symbol = symbol as u16;
                        step.flags |= EMIT;
                        node = 0;
                    } else {
                        node = child as usize;
                    }
                }
                step.next = node as u16;
            }
            row
        })
        .collect();
    Machine { steps, accepting }
});

fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let machine = &*MACHINE;
    let mut state = 0usize;
    for &byte in bytes {
        for nibble in [byte >> 4, byte & 0xf] {
            let step = machine.steps[state][usize::from(nibble)];
            if step.flags & FAIL != 0 {
                return Err(HpackError::BadHuffman);
            }
            if step.flags & EMIT != 0 {
                out.push(step.symbol as u8);
            }
            state = usize::from(step.next);
        }
    }
    if !machine.accepting[state] {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        decoder.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        })?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_canonical_codes_are_the_rfcs() {
        let codes = codes();
        // Appendix B: a few codes of each kind.
        assert_eq!((codes[0], CODE_LENGTHS[0]), (0x1ff8, 13));
        assert_eq!((codes[1], CODE_LENGTHS[1]), (0x7f_ffd8, 23));
        assert_eq!((codes[9], CODE_LENGTHS[9]), (0xff_ffea, 24));
        assert_eq!((codes[10], CODE_LENGTHS[10]), (0x3fff_fffc, 30));
        assert_eq!(
            (codes[usize::from(b'0')], CODE_LENGTHS[usize::from(b'0')]),
            (0x0, 5)
        );
        assert_eq!(
            (codes[usize::from(b't')], CODE_LENGTHS[usize::from(b't')]),
            (0x9, 5)
        );
        assert_eq!(
            (codes[usize::from(b' ')], CODE_LENGTHS[usize::from(b' ')]),
            (0x14, 6)
        );
        assert_eq!((codes[256], CODE_LENGTHS[256]), (0x3fff_ffff, 30));
    }

    /// RFC 7541 appendix C.4: three requests with Huffman-coded strings, sharing the table.
    #[test]
    fn the_rfcs_huffman_requests_decode_with_their_table() {
        let mut decoder = Decoder::new(4096);
        let first = fields(
            &mut decoder,
            &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        );
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(first.unwrap(), pairs(&base));
        assert_eq!(decoder.size, 57);
        let second = fields(&mut decoder, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        let mut expected = base.to_vec();
        expected.push(("cache-control", "no-cache"));
        assert_eq!(second.unwrap(), pairs(&expected));
        assert_eq!(decoder.size, 110);
        let third = fields(
            &mut decoder,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(
            third.unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(decoder.size, 164);
    }

    /// RFC 7541 appendix C.3.1: the same request without Huffman coding.
    #[test]
    fn a_plain_request_decodes() {
        let mut decoder = Decoder::new(4096);
        let block = hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d");
        assert_eq!(
            fields(&mut decoder, &block).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ])
        );
    }

    #[test]
    fn every_byte_survives_a_huffman_round_trip() {
        let codes = codes();
        let text: Vec<u8> = (0..=255u8)
            .chain(b"JSESSIONID=0123abcdef".iter().copied())
            .collect();
        let (mut bits, mut pending, mut encoded) = (0u32, 0u64, Vec::new());
        for &byte in &text {
            let len = u32::from(CODE_LENGTHS[usize::from(byte)]);
            pending = pending << len | u64::from(codes[usize::from(byte)]);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                encoded.push((pending >> bits) as u8);
            }
        }
        if bits > 0 {
            // Padded with the most significant bits of EOS (ones).
            encoded.push((pending << (8 - bits)) as u8 | (0xff >> bits));
        }
        let mut out = Vec::new();
        huffman_decode(&encoded, &mut out).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn bad_huffman_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // "a" is 00011: padded with zeros instead of ones.
        assert_eq!(
            huffman_decode(&[0b0001_1000], &mut out),
            Err(HpackError::BadHuffman)
        );
        // A whole byte of padding after "0" (00000 + 111 + 11111111).
        assert_eq!(
            huffman_decode(&[0b0000_0111, 0xff], &mut out),
            Err(HpackError::BadHuffman)
        );
        // EOS itself (30 ones), padded.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HpackError::BadHuffman)
        );
        out.clear();
        assert_eq!(huffman_decode(&[0b0001_1111], &mut out), Ok(()));
        assert_eq!(out, b"a");
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut decoder = Decoder::new(4096);
        assert_eq!(fields(&mut decoder, &[0x80]), Err(HpackError::BadIndex));
        assert_eq!(fields(&mut decoder, &[0xbe]), Err(HpackError::BadIndex));
        assert_eq!(
            fields(&mut decoder, &[0x41, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            fields(&mut decoder, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(HpackError::Overflow)
        );
        // A size update past the allowed size, and one after a field.
        assert_eq!(
            fields(&mut decoder, &[0x3f, 0xe2, 0x1f]),
            Err(HpackError::BadSizeUpdate)
        );
        assert_eq!(
            fields(&mut decoder, &[0x82, 0x20]),
            Err(HpackError::BadSizeUpdate)
        );
        assert_eq!(fields(&mut decoder, &[0x20, 0x82]).unwrap().len(), 1);
    }

    #[test]
    fn the_table_evicts_its_oldest_entries_and_a_size_update_shrinks_it() {
        let mut decoder = Decoder::new(100);
        // Two literal fields with indexing, 32 + 2 + 30 = 64 bytes each: only one fits.
        let mut block = vec![0x40, 2, b'k', b'1', 30];
        block.extend_from_slice(&[b'v'; 30]);
        fields(&mut decoder, &block).unwrap();
        block[3] = b'2';
        fields(&mut decoder, &block).unwrap();
        assert_eq!(decoder.table.len(), 1);
        assert_eq!(fields(&mut decoder, &[0xbe]).unwrap()[0].0, "k2");
        assert_eq!(fields(&mut decoder, &[0x20]).unwrap().len(), 0);
        assert_eq!((decoder.table.len(), decoder.size), (0, 0));
        assert_eq!(fields(&mut decoder, &[0xbe]), Err(HpackError::BadIndex));
    }
}
