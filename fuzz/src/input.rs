//! Cutting one fuzz input into parameters and data, and feeding data in small reads.

/// Splits off `N` parameter bytes from the front; inputs shorter than that are skipped.
pub fn params<const N: usize>(data: &[u8]) -> Option<(&[u8; N], &[u8])> {
    data.split_first_chunk::<N>()
}

/// A split point in `0..=len` chosen by `sel` (0 = before everything, 255 = after).
pub fn split_point(len: usize, sel: u8) -> usize {
    len * usize::from(sel) / 255
}

/// The lengths of successive reads that deliver `len` bytes, each 1..=`max_piece` bytes long,
/// drawn by a xorshift generator from `seed`: the same input always gives the same reads.
pub fn pieces(len: usize, max_piece: usize, seed: u8) -> Vec<usize> {
    let mut state = 0x9e37_79b9_u32 ^ u32::from(seed);
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max_piece.max(1) + 1).min(left);
        out.push(n);
        left -= n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_input_exactly() {
        for (len, max, seed) in [(0, 1, 0), (1, 1, 9), (100, 7, 3), (33, 64, 255)] {
            let p = pieces(len, max, seed);
            assert_eq!(p.iter().sum::<usize>(), len);
            assert!(p.iter().all(|&n| (1..=max).contains(&n)));
        }
        assert_eq!(split_point(10, 0), 0);
        assert_eq!(split_point(10, 255), 10);
    }
}
