//! The BTF walker on small hand-built blobs.

use super::{mark_u8_as_char, BTF_INT_CHAR, MIN_HEADER_LEN};

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const ENUM: u32 = 6;
const FUNC_PROTO: u32 = 13;
const DATASEC: u32 = 15;

/// Builds a little-endian BTF blob one type at a time.
struct BtfBuilder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl BtfBuilder {
    fn new() -> Self {
        // Offset 0 of the string section is the empty name.
        Self {
            types: Vec::new(),
            strings: vec![0],
        }
    }

    fn name(&mut self, name: &str) -> u32 {
        let offset = u32::try_from(self.strings.len()).unwrap();
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        offset
    }

    /// Adds a type; returns the offset of its kind-specific data within the type section.
    fn add(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, data: &[u32]) -> usize {
        let name_off = if name.is_empty() { 0 } else { self.name(name) };
        for word in [name_off, (kind << 24) | vlen, size_or_type] {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        let data_offset = self.types.len();
        for word in data {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        data_offset
    }

    fn finish(&self) -> Vec<u8> {
        let type_len = u32::try_from(self.types.len()).unwrap();
        let str_len = u32::try_from(self.strings.len()).unwrap();
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xEB9F_u16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]); // version, flags
        for word in [24, 0, type_len, type_len, str_len] {
            blob.extend_from_slice(&u32::to_le_bytes(word));
        }
        blob.extend_from_slice(&self.types);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

/// An INT's encoding word: encoding in bits 24..27, bit offset 16..23, bit count 0..7.
fn int_data(encoding: u32, bits: u32) -> u32 {
    (encoding << 24) | bits
}

fn read_u32_at(blob: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(blob[offset..offset + 4].try_into().unwrap())
}

/// A blob shaped like what bpf-linker emits: the `u8` INT after types of every trailing-data
/// shape, so the walker must skip each correctly to reach it.
fn realistic_blob() -> (BtfBuilder, usize) {
    let mut btf = BtfBuilder::new();
    btf.add("u32", INT, 0, 4, &[int_data(0, 32)]);
    btf.add("", PTR, 0, 1, &[]);
    btf.add("", ARRAY, 0, 0, &[1, 1, 16]);
    btf.add("StickKey", STRUCT, 2, 20, &[0, 3, 0, 0, 1, 128]);
    btf.add("Kind", ENUM, 2, 4, &[0, 0, 0, 1]);
    btf.add("", FUNC_PROTO, 1, 1, &[0, 1]);
    let u8_data = btf.add("u8", INT, 0, 1, &[int_data(0, 8)]);
    btf.add(".maps", DATASEC, 1, 0, &[1, 0, 8]);
    (btf, u8_data)
}

#[test]
fn marks_u8_as_char_and_changes_nothing_else() {
    let (btf, u8_data) = realistic_blob();
    let original = btf.finish();
    let mut patched = original.clone();

    mark_u8_as_char(&mut patched).unwrap();

    let u8_word = MIN_HEADER_LEN + u8_data;
    assert_eq!(read_u32_at(&patched, u8_word), int_data(BTF_INT_CHAR, 8));
    let mut expected = original;
    expected[u8_word..u8_word + 4].copy_from_slice(&int_data(BTF_INT_CHAR, 8).to_le_bytes());
    assert_eq!(patched, expected);
}

#[test]
fn replaces_an_existing_encoding() {
    let mut btf = BtfBuilder::new();
    let u8_data = btf.add("u8", INT, 0, 1, &[int_data(1, 8)]);
    let mut blob = btf.finish();

    mark_u8_as_char(&mut blob).unwrap();

    assert_eq!(
        read_u32_at(&blob, MIN_HEADER_LEN + u8_data),
        int_data(BTF_INT_CHAR, 8)
    );
}

#[test]
fn leaves_other_one_byte_ints_alone() {
    let mut btf = BtfBuilder::new();
    let i8_data = btf.add("i8", INT, 0, 1, &[int_data(1, 8)]);
    btf.add("u8", INT, 0, 1, &[int_data(0, 8)]);
    let mut blob = btf.finish();

    mark_u8_as_char(&mut blob).unwrap();

    assert_eq!(read_u32_at(&blob, MIN_HEADER_LEN + i8_data), int_data(1, 8));
}

#[test]
fn fails_without_a_u8_int() {
    let mut btf = BtfBuilder::new();
    btf.add("u32", INT, 0, 4, &[int_data(0, 32)]);
    btf.add("u8", INT, 0, 4, &[int_data(0, 32)]); // right name, wrong size
    let error = mark_u8_as_char(&mut btf.finish()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no one-byte INT type named `u8`"),
        "{error:#}"
    );
}

#[test]
fn fails_on_bad_magic() {
    let (btf, _) = realistic_blob();
    let mut blob = btf.finish();
    blob[0] = 0;
    assert!(mark_u8_as_char(&mut blob).is_err());
}

#[test]
fn fails_on_big_endian_blob() {
    let (btf, _) = realistic_blob();
    let mut blob = btf.finish();
    blob[..2].copy_from_slice(&0xEB9F_u16.to_be_bytes());
    let error = mark_u8_as_char(&mut blob).unwrap_err();
    assert!(error.to_string().contains("big-endian"), "{error:#}");
}

#[test]
fn fails_on_a_truncated_blob() {
    let (btf, _) = realistic_blob();
    let blob = btf.finish();
    for len in [0, 3, MIN_HEADER_LEN - 1, MIN_HEADER_LEN + 5, blob.len() - 1] {
        let mut truncated = blob[..len].to_vec();
        assert!(
            mark_u8_as_char(&mut truncated).is_err(),
            "accepted {len} bytes"
        );
    }
}

#[test]
fn fails_when_a_type_runs_past_the_type_section() {
    let mut btf = BtfBuilder::new();
    btf.add("u8", INT, 0, 1, &[int_data(0, 8)]);
    btf.add("Big", STRUCT, 50, 8, &[]); // claims 50 members, has none
    let error = mark_u8_as_char(&mut btf.finish()).unwrap_err();
    assert!(
        error.to_string().contains("runs past the type section"),
        "{error:#}"
    );
}

#[test]
fn fails_on_an_unknown_kind() {
    let mut btf = BtfBuilder::new();
    btf.add("", 31, 0, 0, &[]);
    btf.add("u8", INT, 0, 1, &[int_data(0, 8)]);
    let error = mark_u8_as_char(&mut btf.finish()).unwrap_err();
    assert!(
        error.to_string().contains("unknown BTF kind 31"),
        "{error:#}"
    );
}

#[test]
fn fails_on_a_name_outside_the_string_section() {
    let mut btf = BtfBuilder::new();
    let name_off = 1000_u32;
    btf.types.extend_from_slice(&name_off.to_le_bytes());
    btf.types.extend_from_slice(&(INT << 24).to_le_bytes());
    btf.types.extend_from_slice(&1_u32.to_le_bytes());
    btf.types.extend_from_slice(&int_data(0, 8).to_le_bytes());
    let error = mark_u8_as_char(&mut btf.finish()).unwrap_err();
    assert!(
        error.to_string().contains("outside the string section"),
        "{error:#}"
    );
}
