//! Port ranges as masked prefixes, the form an LPM trie can match.

/// A port prefix: the ports whose top `len` bits equal those of `port`.
/// `len == 16` is one port, `len == 0` is every port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PortPrefix {
    /// First port of the block (low bits zero).
    pub port: u16,
    /// Number of significant leading bits (0..=16).
    pub len: u8,
}

impl PortPrefix {
    /// Every port.
    pub const ANY: PortPrefix = PortPrefix { port: 0, len: 0 };

    /// A single port.
    pub fn single(port: u16) -> Self {
        PortPrefix { port, len: 16 }
    }

    /// Whether `port` falls in the block.
    pub fn contains(self, port: u16) -> bool {
        let mask = if self.len == 0 { 0 } else { u16::MAX << (16 - u32::from(self.len)) };
        port & mask == self.port & mask
    }

    /// The inclusive range the block covers.
    pub fn range(self) -> (u16, u16) {
        let span = if self.len == 0 { u32::from(u16::MAX) } else { (1u32 << (16 - u32::from(self.len))) - 1 };
        let last = u32::from(self.port) + span;
        (self.port, u16::try_from(last).unwrap_or(u16::MAX))
    }
}

/// Splits the inclusive range `start..=end` into the fewest aligned prefixes
/// (at most 30 for a 16-bit range).
pub fn range_to_prefixes(start: u16, end: u16) -> Vec<PortPrefix> {
    let mut out = Vec::new();
    if start > end {
        return out;
    }
    let (mut lo, hi) = (u32::from(start), u32::from(end));
    while lo <= hi {
        // Largest block aligned at `lo` that does not pass `hi`.
        let mut size = if lo == 0 { 1u32 << 16 } else { 1u32 << lo.trailing_zeros().min(16) };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        let len = 16 - size.trailing_zeros();
        // `lo` is at most `hi` <= 65535 here.
        out.push(PortPrefix { port: u16::try_from(lo).unwrap_or(u16::MAX), len: len as u8 });
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_decompositions() {
        assert_eq!(range_to_prefixes(80, 80), vec![PortPrefix::single(80)]);
        assert_eq!(range_to_prefixes(0, 65535), vec![PortPrefix::ANY]);
        assert_eq!(range_to_prefixes(1, 65535).len(), 16);
        assert_eq!(
            range_to_prefixes(32000, 32767),
            vec![PortPrefix { port: 32000, len: 8 }, PortPrefix { port: 32256, len: 7 }]
        );
        assert!(range_to_prefixes(5, 4).is_empty());
    }

    proptest! {
        #[test]
        fn prefixes_cover_exactly_the_range(a in any::<u16>(), b in any::<u16>(), probe in any::<u16>()) {
            let (start, end) = (a.min(b), a.max(b));
            let ps = range_to_prefixes(start, end);
            prop_assert!(ps.len() <= 30);
            let inside = (start..=end).contains(&probe);
            let hits = ps.iter().filter(|p| p.contains(probe)).count();
            prop_assert_eq!(hits, usize::from(inside), "prefixes must not overlap");
            for p in &ps {
                let (lo, hi) = p.range();
                prop_assert!(lo >= start && hi <= end);
            }
        }
    }
}
