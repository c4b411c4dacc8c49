//! Addresses in another process's address space.
//!
//! A [`RemoteAddr`] is never a host pointer and never a bare `usize`: arithmetic on it is
//! checked, so that a corrupt pointer read from a tracee cannot wrap around silently.

use std::fmt;

/// An address in a tracee's (or a snapshot's) address space.
#[derive(Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteAddr(u64);

impl RemoteAddr {
    /// The null address.
    pub const NULL: RemoteAddr = RemoteAddr(0);

    /// Wraps a raw address value.
    pub const fn new(value: u64) -> Self {
        RemoteAddr(value)
    }

    /// The raw address value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Whether this is the null address.
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// `self + offset`, or `None` on overflow.
    pub fn checked_add(self, offset: u64) -> Option<Self> {
        self.0.checked_add(offset).map(RemoteAddr)
    }

    /// `self - offset`, or `None` on underflow.
    pub fn checked_sub(self, offset: u64) -> Option<Self> {
        self.0.checked_sub(offset).map(RemoteAddr)
    }

    /// The distance from `base` up to `self`, or `None` if `self` is below `base`.
    pub fn offset_from(self, base: RemoteAddr) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// Rounds down to a multiple of `align` (a power of two).
    pub fn align_down(self, align: u64) -> Self {
        debug_assert!(align.is_power_of_two());
        RemoteAddr(self.0 & !(align - 1))
    }

    /// Rounds up to a multiple of `align` (a power of two), or `None` on overflow.
    pub fn align_up(self, align: u64) -> Option<Self> {
        debug_assert!(align.is_power_of_two());
        self.0
            .checked_add(align - 1)
            .map(|v| RemoteAddr(v & !(align - 1)))
    }
}

impl fmt::Debug for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for RemoteAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A half-open range `[start, end)` of remote addresses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteRange {
    /// First address in the range.
    pub start: RemoteAddr,
    /// First address past the range.
    pub end: RemoteAddr,
}

impl RemoteRange {
    /// The range `[start, end)`; `end` below `start` gives an empty range at `start`.
    pub fn new(start: RemoteAddr, end: RemoteAddr) -> Self {
        RemoteRange {
            start,
            end: end.max(start),
        }
    }

    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `addr` lies inside the range.
    pub fn contains(&self, addr: RemoteAddr) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Serialised as a hex string (`"0x5555555592a0"`): JSON numbers lose precision above 2^53,
/// and hex is how addresses are read.
impl serde::Serialize for RemoteAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:#x}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_checked() {
        let a = RemoteAddr::new(u64::MAX - 1);
        assert_eq!(a.checked_add(1), Some(RemoteAddr::new(u64::MAX)));
        assert_eq!(a.checked_add(2), None);
        assert_eq!(RemoteAddr::new(3).checked_sub(4), None);
        assert_eq!(RemoteAddr::new(10).offset_from(RemoteAddr::new(4)), Some(6));
        assert_eq!(RemoteAddr::new(4).offset_from(RemoteAddr::new(10)), None);
        assert_eq!(RemoteAddr::new(0x1234).align_down(0x1000).get(), 0x1000);
        assert_eq!(
            RemoteAddr::new(0x1234).align_up(0x1000).unwrap().get(),
            0x2000
        );
        assert_eq!(RemoteAddr::new(u64::MAX).align_up(16), None);
        assert_eq!(format!("{}", RemoteAddr::new(255)), "0xff");
    }

    #[test]
    fn ranges() {
        let r = RemoteRange::new(RemoteAddr::new(0x10), RemoteAddr::new(0x20));
        assert_eq!(r.len(), 0x10);
        assert!(r.contains(RemoteAddr::new(0x10)));
        assert!(!r.contains(RemoteAddr::new(0x20)));
        assert!(RemoteRange::new(RemoteAddr::new(5), RemoteAddr::new(1)).is_empty());
    }
}
