//! BTF post-processing of the eBPF object: mark Rust's `u8` as a character type.
//!
//! Rust's `u8` reaches BTF as a plain unsigned one-byte INT, so `bpftool map dump` prints a
//! NUL-padded `[u8; N]` cookie as a list of hex bytes. With the INT's encoding set to
//! `BTF_INT_CHAR` (as C's `char` has), bpftool prints such arrays as strings. The kernel
//! accepts the CHAR encoding on any INT, and the size and layout of the type do not change.
//!
//! The format is the kernel's `Documentation/bpf/btf.rst`; only little-endian BTF is handled,
//! which is all `bpfel-unknown-none` produces. Every read is bounds-checked.

use std::ops::Range;

use anyhow::{bail, ensure, Context as _};
use object::{Object as _, ObjectSection as _};

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
/// magic u16, version u8, flags u8, then hdr_len, type_off, type_len, str_off, str_len (u32).
const MIN_HEADER_LEN: usize = 24;
/// name_off, info, size_or_type: the part every type has before its kind-specific data.
const TYPE_HEADER_LEN: usize = 12;

const KIND_INT: u32 = 1;
/// Bits 24..27 of an INT's trailing u32.
const INT_ENCODING_MASK: u32 = 0x0f00_0000;
const INT_ENCODING_SHIFT: u32 = 24;
const BTF_INT_CHAR: u32 = 2;

/// Marks the `u8` INT of the object's `.BTF` section as CHAR, in place.
pub(crate) fn mark_u8_as_char_in_elf(elf: &mut [u8]) -> anyhow::Result<()> {
    let range = btf_section_range(elf)?;
    let btf = elf
        .get_mut(range)
        .context("the .BTF section lies outside the file")?;
    mark_u8_as_char(btf)
}

/// Where the `.BTF` section's bytes are in the file.
fn btf_section_range(elf: &[u8]) -> anyhow::Result<Range<usize>> {
    let file = object::File::parse(elf).context("the eBPF object is not a readable ELF file")?;
    let section = file
        .section_by_name(".BTF")
        .context("the eBPF object has no .BTF section (was it linked with `bpf-linker --btf`?)")?;
    let (offset, size) = section
        .file_range()
        .context("the .BTF section has no data in the file")?;
    let start = usize::try_from(offset).context("the .BTF section offset does not fit usize")?;
    let size = usize::try_from(size).context("the .BTF section size does not fit usize")?;
    let end = start
        .checked_add(size)
        .context("the .BTF section's end overflows")?;
    ensure!(
        end <= elf.len(),
        "the .BTF section ends past the end of the file"
    );
    Ok(start..end)
}

/// Marks every one-byte INT named `u8` in a raw BTF blob as CHAR; fails if there is none.
fn mark_u8_as_char(btf: &mut [u8]) -> anyhow::Result<()> {
    let layout = Layout::parse(btf)?;
    let u8_encodings = find_u8_int_encodings(btf, &layout)?;
    if u8_encodings.is_empty() {
        bail!("the BTF has no one-byte INT type named `u8`");
    }
    for offset in u8_encodings {
        let word = read_u32(btf, offset)?;
        let char_word = (word & !INT_ENCODING_MASK) | (BTF_INT_CHAR << INT_ENCODING_SHIFT);
        write_u32(btf, offset, char_word)?;
    }
    Ok(())
}

/// The type and string sections' byte ranges within the blob.
struct Layout {
    types: Range<usize>,
    strings: Range<usize>,
}

impl Layout {
    fn parse(btf: &[u8]) -> anyhow::Result<Self> {
        let magic = read_u16(btf, 0)?;
        if magic == BTF_MAGIC.swap_bytes() {
            bail!("the BTF is big-endian; only little-endian BTF is supported");
        }
        ensure!(magic == BTF_MAGIC, "bad BTF magic {magic:#06x}");
        let version = *btf.get(2).context("the BTF header is truncated")?;
        ensure!(version == BTF_VERSION, "unsupported BTF version {version}");
        let header_len = read_usize(btf, 4)?;
        ensure!(
            header_len >= MIN_HEADER_LEN,
            "the BTF header length {header_len} is below {MIN_HEADER_LEN}"
        );
        let types = section(btf, header_len, read_usize(btf, 8)?, read_usize(btf, 12)?)
            .context("bad BTF type section bounds")?;
        let strings = section(btf, header_len, read_usize(btf, 16)?, read_usize(btf, 20)?)
            .context("bad BTF string section bounds")?;
        Ok(Self { types, strings })
    }

    /// The NUL-terminated name at `name_off` in the string section.
    fn name<'a>(&self, btf: &'a [u8], name_off: usize) -> anyhow::Result<&'a [u8]> {
        let start = self
            .strings
            .start
            .checked_add(name_off)
            .filter(|&start| start < self.strings.end)
            .with_context(|| format!("BTF name offset {name_off} is outside the string section"))?;
        let rest = btf
            .get(start..self.strings.end)
            .context("the BTF string section lies outside the blob")?;
        let len = rest
            .iter()
            .position(|&byte| byte == 0)
            .with_context(|| format!("BTF name at offset {name_off} is not NUL-terminated"))?;
        Ok(&rest[..len])
    }
}

/// `header_len + offset .. + len`, checked against the blob.
fn section(
    btf: &[u8],
    header_len: usize,
    offset: usize,
    len: usize,
) -> anyhow::Result<Range<usize>> {
    let start = header_len.checked_add(offset).context("offset overflows")?;
    let end = start.checked_add(len).context("length overflows")?;
    ensure!(
        end <= btf.len(),
        "section {start}..{end} ends past the blob ({} bytes)",
        btf.len()
    );
    Ok(start..end)
}

/// Walks the type section; returns the offsets of the encoding words of one-byte INTs named `u8`.
fn find_u8_int_encodings(btf: &[u8], layout: &Layout) -> anyhow::Result<Vec<usize>> {
    let mut found = Vec::new();
    let mut offset = layout.types.start;
    while offset < layout.types.end {
        let name_off = read_usize(btf, offset)?;
        let info = read_u32(btf, offset + 4)?;
        let size = read_u32(btf, offset + 8)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = usize::from(info as u16); // the low 16 bits
        let extra = kind_data_len(kind, vlen)
            .with_context(|| format!("unknown BTF kind {kind} at offset {offset}"))?;
        let data = offset + TYPE_HEADER_LEN;
        let next = data + extra;
        ensure!(
            next <= layout.types.end,
            "the BTF type at offset {offset} (kind {kind}) runs past the type section"
        );
        if kind == KIND_INT && size == 1 && layout.name(btf, name_off)? == b"u8" {
            found.push(data);
        }
        offset = next;
    }
    Ok(found)
}

/// The bytes of kind-specific data that follow a type's 12-byte header.
fn kind_data_len(kind: u32, vlen: usize) -> Option<usize> {
    let len = match kind {
        1 => 4,             // INT: encoding, offset, bits
        2 => 0,             // PTR
        3 => 12,            // ARRAY: btf_array
        4 | 5 => 12 * vlen, // STRUCT, UNION: btf_member each
        6 => 8 * vlen,      // ENUM: btf_enum each
        7..=12 => 0,        // FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC
        13 => 8 * vlen,     // FUNC_PROTO: btf_param each
        14 => 4,            // VAR: btf_var
        15 => 12 * vlen,    // DATASEC: btf_var_secinfo each
        16 => 0,            // FLOAT
        17 => 4,            // DECL_TAG: btf_decl_tag
        18 => 0,            // TYPE_TAG
        19 => 12 * vlen,    // ENUM64: btf_enum64 each
        _ => return None,
    };
    Some(len)
}

fn read_u16(btf: &[u8], offset: usize) -> anyhow::Result<u16> {
    let bytes: [u8; 2] = btf
        .get(offset..offset + 2)
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("BTF truncated: no u16 at offset {offset}"))?;
    Ok(u16::from_le_bytes(bytes))
}

fn read_u32(btf: &[u8], offset: usize) -> anyhow::Result<u32> {
    let bytes: [u8; 4] = btf
        .get(offset..offset + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("BTF truncated: no u32 at offset {offset}"))?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_usize(btf: &[u8], offset: usize) -> anyhow::Result<usize> {
    usize::try_from(read_u32(btf, offset)?).context("a BTF offset does not fit usize")
}

fn write_u32(btf: &mut [u8], offset: usize, value: u32) -> anyhow::Result<()> {
    btf.get_mut(offset..offset + 4)
        .with_context(|| format!("BTF truncated: no u32 at offset {offset}"))?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests;
