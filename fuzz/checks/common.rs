//! What the checks share: reading an input as "split lengths, then data", and cutting the data
//! into those pieces. Seeds are written as one zero byte (no lengths) followed by the data.
#![allow(dead_code)]

use arbitrary::Unstructured;

/// Reads the piece lengths with `arbitrary` (each one a continue bit and a byte), then takes
/// the rest of the input as the data.
pub fn lens_then_data(u: &mut Unstructured<'_>) -> Vec<u8> {
    u.arbitrary().unwrap_or_default()
}

/// `data` cut into pieces of `lens[i] + 1` bytes, the lengths cycled; with no lengths, one
/// byte at a time (the cut that finds most boundary bugs).
pub fn pieces<'a>(data: &'a [u8], lens: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = match lens {
            [] => 1,
            l => usize::from(l[i % l.len()]) + 1,
        };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
        i += 1;
    }
    out
}

/// An `arbitrary` value, or its default when the input ran out.
pub fn take<'a, T: arbitrary::Arbitrary<'a> + Default>(u: &mut Unstructured<'a>) -> T {
    u.arbitrary().unwrap_or_default()
}
