//! Binary floating-point values printed as gdb 13 prints them.
//!
//! gdb formats a float with the host's `printf("%.{N}g")`, where N is the format's
//! `DECIMAL_DIG` (`ceil(1 + p·log10 2)` for a `p`-bit significand: 9 for `float`, 17 for
//! `double`, 21 for x87 `long double`, 36 for binary128), so the text reads back to the same
//! value; NaNs are `nan(0x<significand bits>)` with a sign, infinities `inf`/`-inf`, and an
//! x87 value whose explicit integer bit contradicts its exponent `<invalid float value>`
//! (`floatformat_printf_format`, `floatformat_mantissa` and `floatformat_i387_ext_is_valid` in
//! gdb's `target-float.c`/`floatformat.c`). The root crate has no `unsafe`, so instead of
//! calling `snprintf` this converts the exact binary value to decimal with a small bignum and
//! rounds half to even, which is what glibc's `printf` does.

use std::fmt::Write as _;

/// An IEEE-style binary floating-point format, little-endian in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloatFormat {
    /// Bits of the encoding that matter (80 for x87 even when stored in 16 bytes).
    pub total_bits: u32,
    /// Exponent width.
    pub exp_bits: u32,
    /// Significand bits stored, including an explicit integer bit when there is one.
    pub man_bits: u32,
    /// The integer bit is stored (x87 extended precision).
    pub explicit_int: bool,
}

impl FloatFormat {
    /// IEEE binary16.
    pub const HALF: FloatFormat = FloatFormat {
        total_bits: 16,
        exp_bits: 5,
        man_bits: 10,
        explicit_int: false,
    };
    /// bfloat16 (`__bf16`).
    pub const BFLOAT16: FloatFormat = FloatFormat {
        total_bits: 16,
        exp_bits: 8,
        man_bits: 7,
        explicit_int: false,
    };
    /// IEEE binary32 (`float`).
    pub const SINGLE: FloatFormat = FloatFormat {
        total_bits: 32,
        exp_bits: 8,
        man_bits: 23,
        explicit_int: false,
    };
    /// IEEE binary64 (`double`).
    pub const DOUBLE: FloatFormat = FloatFormat {
        total_bits: 64,
        exp_bits: 11,
        man_bits: 52,
        explicit_int: false,
    };
    /// x87 80-bit extended precision (`long double` on x86_64).
    pub const X87: FloatFormat = FloatFormat {
        total_bits: 80,
        exp_bits: 15,
        man_bits: 64,
        explicit_int: true,
    };
    /// IEEE binary128 (`_Float128`, `__float128`).
    pub const QUAD: FloatFormat = FloatFormat {
        total_bits: 128,
        exp_bits: 15,
        man_bits: 112,
        explicit_int: false,
    };

    /// The format gdb uses for a DWARF float of `size` bytes called `name`, if known.
    pub fn for_base_type(name: &str, size: u64) -> Option<FloatFormat> {
        match size {
            2 if name.contains("bf16") => Some(Self::BFLOAT16),
            2 => Some(Self::HALF),
            4 => Some(Self::SINGLE),
            8 => Some(Self::DOUBLE),
            10 | 12 => Some(Self::X87),
            16 if name.contains("128") => Some(Self::QUAD),
            16 => Some(Self::X87),
            _ => None,
        }
    }

    /// Significand precision in bits (the implicit integer bit counted).
    fn precision(self) -> u32 {
        self.man_bits + u32::from(!self.explicit_int)
    }

    /// gdb's `%.Ng` precision: `ceil(1 + p * log10(2))`.
    fn decimal_dig(self) -> usize {
        let d = 1.0 + f64::from(self.precision()) * std::f64::consts::LOG10_2;
        d.ceil() as usize
    }
}

/// Renders the float stored little-endian in `bytes` (at least `total_bits / 8` of them).
pub fn format_float(bytes: &[u8], fmt: FloatFormat) -> String {
    let nbytes = fmt.total_bits.div_ceil(8) as usize;
    let mut raw = [0u8; 16];
    let n = nbytes.min(bytes.len()).min(16);
    raw[..n].copy_from_slice(&bytes[..n]);
    let bits = u128::from_le_bytes(raw);
    let man_mask = mask(fmt.man_bits);
    let mantissa = bits & man_mask;
    let exponent = ((bits >> fmt.man_bits) & mask(fmt.exp_bits)) as u32;
    let negative = (bits >> (fmt.man_bits + fmt.exp_bits)) & 1 == 1;
    let exp_max = (1u32 << fmt.exp_bits) - 1;
    let sign = if negative { "-" } else { "" };

    if fmt.explicit_int {
        let int_bit = (mantissa >> (fmt.man_bits - 1)) & 1;
        if (exponent == 0) != (int_bit == 0) {
            return "<invalid float value>".into();
        }
    }
    // The fraction without an explicit integer bit, for classification.
    let fraction = if fmt.explicit_int {
        mantissa & mask(fmt.man_bits - 1)
    } else {
        mantissa
    };
    if exponent == exp_max {
        if fraction == 0 {
            return format!("{sign}inf");
        }
        return format!("{sign}nan(0x{})", nan_mantissa(mantissa, fmt.man_bits));
    }

    // value = significand * 2^e2, exactly.
    let bias = (1i64 << (fmt.exp_bits - 1)) - 1;
    let frac_bits = i64::from(fmt.man_bits) - i64::from(fmt.explicit_int);
    let (significand, e2) = if exponent == 0 {
        (mantissa, 1 - bias - frac_bits)
    } else if fmt.explicit_int {
        (mantissa, i64::from(exponent) - bias - frac_bits)
    } else {
        (
            mantissa | (1u128 << fmt.man_bits),
            i64::from(exponent) - bias - frac_bits,
        )
    };
    let mut out = String::from(sign);
    format_g(&mut out, significand, e2, fmt.decimal_dig());
    out
}

fn mask(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// `floatformat_mantissa`: the stored significand in hex, the first `man_bits % 32` bits
/// (or 32) with `%lx`, every further 32 bits with `%08lx`.
fn nan_mantissa(mantissa: u128, man_bits: u32) -> String {
    let first = if man_bits.is_multiple_of(32) {
        32
    } else {
        man_bits % 32
    };
    let mut left = man_bits - first;
    let mut s = format!("{:x}", (mantissa >> left) & mask(first));
    while left > 0 {
        left -= 32;
        let _ = write!(s, "{:08x}", (mantissa >> left) & 0xffff_ffff);
    }
    s
}

/// Appends C's `%.{precision}g` of `significand * 2^e2` (non-negative), rounded half to even.
fn format_g(out: &mut String, significand: u128, e2: i64, precision: usize) {
    let precision = precision.max(1);
    if significand == 0 {
        out.push('0');
        return;
    }
    // Exact decimal expansion: digits × 10^exp10, no leading zeros.
    let mut n = Big::from_u128(significand);
    let exp10: i64 = if e2 >= 0 {
        n.shl(e2 as u64);
        0
    } else {
        n.mul_pow5((-e2) as u64);
        e2
    };
    let digits = n.to_decimal();
    // Decimal exponent of the leading digit.
    let mut x = digits.len() as i64 - 1 + exp10;
    let mut kept: Vec<u8> = round_half_even(&digits, precision);
    if kept.len() > precision {
        // Rounding carried into a new leading digit (9.99 -> 10.0).
        kept.truncate(precision);
        x += 1;
    }
    let p = precision as i64;
    if x < p && x >= -4 {
        // %f with precision p - 1 - x.
        let decimals = (p - 1 - x) as usize;
        let mut s = String::new();
        if x >= 0 {
            let int_len = x as usize + 1;
            s.extend(kept[..int_len].iter().map(|&d| char::from(b'0' + d)));
            let frac: String = kept[int_len..]
                .iter()
                .map(|&d| char::from(b'0' + d))
                .collect();
            push_fraction(&mut s, &frac, decimals);
        } else {
            s.push('0');
            let mut frac = "0".repeat((-x - 1) as usize);
            frac.extend(kept.iter().map(|&d| char::from(b'0' + d)));
            push_fraction(&mut s, &frac, decimals);
        }
        out.push_str(&s);
    } else {
        out.push(char::from(b'0' + kept[0]));
        let frac: String = kept[1..].iter().map(|&d| char::from(b'0' + d)).collect();
        push_fraction(out, &frac, precision - 1);
        let _ = write!(out, "e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs());
    }
}

/// Appends `.frac` padded/truncated to `decimals` digits, then drops trailing zeros (and the
/// point), as `%g` without `#` does.
fn push_fraction(out: &mut String, frac: &str, decimals: usize) {
    let mut f: String = frac.chars().take(decimals).collect();
    while f.len() < decimals {
        f.push('0');
    }
    let trimmed = f.trim_end_matches('0');
    if !trimmed.is_empty() {
        out.push('.');
        out.push_str(trimmed);
    }
}

/// The first `n` digits of `digits` (ASCII), rounded half to even on the rest; one digit
/// longer when the rounding carries out of the first digit.
fn round_half_even(digits: &[u8], n: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = digits.iter().take(n).map(|d| d - b'0').collect();
    while kept.len() < n {
        kept.push(0);
    }
    if digits.len() <= n {
        return kept;
    }
    let first = digits[n] - b'0';
    let rest_zero = digits[n + 1..].iter().all(|&d| d == b'0');
    let round_up = first > 5 || (first == 5 && (!rest_zero || kept[n - 1] % 2 == 1));
    if round_up {
        let mut i = n;
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    kept
}

/// A non-negative big integer, little-endian base 2^32 limbs: just enough arithmetic for
/// exact binary-to-decimal conversion.
struct Big(Vec<u32>);

impl Big {
    fn from_u128(v: u128) -> Big {
        let mut limbs = Vec::new();
        let mut v = v;
        while v != 0 {
            limbs.push(v as u32);
            v >>= 32;
        }
        Big(limbs)
    }

    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for l in &mut self.0 {
            let p = u64::from(*l) * u64::from(m) + carry;
            *l = p as u32;
            carry = p >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
    }

    fn mul_pow5(&mut self, mut k: u64) {
        const FIVE_13: u32 = 1_220_703_125;
        while k >= 13 {
            self.mul_small(FIVE_13);
            k -= 13;
        }
        if k > 0 {
            self.mul_small(5u32.pow(k as u32));
        }
    }

    fn shl(&mut self, bits: u64) {
        let words = (bits / 32) as usize;
        let rem = (bits % 32) as u32;
        if rem != 0 {
            let mut carry = 0u32;
            for l in &mut self.0 {
                let v = (*l << rem) | carry;
                carry = *l >> (32 - rem);
                *l = v;
            }
            if carry != 0 {
                self.0.push(carry);
            }
        }
        if words > 0 {
            let mut v = vec![0; words];
            v.append(&mut self.0);
            self.0 = v;
        }
    }

    /// Decimal digits (ASCII), most significant first; `"0"` for zero.
    fn to_decimal(&self) -> Vec<u8> {
        const CHUNK: u64 = 1_000_000_000;
        let mut limbs = self.0.clone();
        let mut chunks: Vec<u32> = Vec::new();
        while limbs.iter().any(|&l| l != 0) {
            let mut rem = 0u64;
            for l in limbs.iter_mut().rev() {
                let cur = (rem << 32) | u64::from(*l);
                *l = (cur / CHUNK) as u32;
                rem = cur % CHUNK;
            }
            while limbs.last() == Some(&0) {
                limbs.pop();
            }
            chunks.push(rem as u32);
        }
        let Some((last, rest)) = chunks.split_last() else {
            return b"0".to_vec();
        };
        let mut s = last.to_string();
        for c in rest.iter().rev() {
            let _ = write!(s, "{c:09}");
        }
        s.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: f32) -> String {
        format_float(&v.to_le_bytes(), FloatFormat::SINGLE)
    }
    fn f64s(v: f64) -> String {
        format_float(&v.to_le_bytes(), FloatFormat::DOUBLE)
    }
    fn x87(bytes: [u8; 10]) -> String {
        format_float(&bytes, FloatFormat::X87)
    }

    #[test]
    fn floats_as_gdb_prints_them() {
        // Expected strings are gdb 13's output for the same values.
        assert_eq!(f32s(1.5), "1.5");
        assert_eq!(f32s(0.1), "0.100000001");
        assert_eq!(f32s(1.0 / 3.0), "0.333333343");
        assert_eq!(f32s(3.4e38), "3.39999995e+38");
        assert_eq!(f32s(1e-45), "1.40129846e-45");
        assert_eq!(f32s(-0.0), "-0");
        assert_eq!(f32s(100.0), "100");
        assert_eq!(f32s(1e7), "10000000");
        assert_eq!(f32s(f32::NAN), "nan(0x400000)");
        assert_eq!(f32s(-f32::NAN), "-nan(0x400000)");
        assert_eq!(f32s(f32::NEG_INFINITY), "-inf");
        // 42 * 2^-149, a denormal.
        assert_eq!(f32s(f32::from_bits(42)), "5.88545355e-44");
        assert_eq!(f64s(0.1), "0.10000000000000001");
        assert_eq!(
            f64s("3.14159265358979".parse().unwrap()),
            "3.14159265358979"
        );
        assert_eq!(f64s(1e300), "1.0000000000000001e+300");
        assert_eq!(f64s(1e16), "10000000000000000");
        assert_eq!(f64s(1e17), "1e+17");
        assert_eq!(f64s(1e-5), "1.0000000000000001e-05");
        assert_eq!(f64s(1e-4), "0.0001");
        assert_eq!(f64s(5e-324), "4.9406564584124654e-324");
        assert_eq!(f64s(9007199254740993.0), "9007199254740992");
        assert_eq!(f64s(-2.25), "-2.25");
        assert_eq!(f64s(f64::INFINITY), "inf");
        assert_eq!(f64s(f64::NAN), "nan(0x8000000000000)");
        assert_eq!(
            f64s(f64::from_bits(0x7ff0_0000_0000_0123)),
            "nan(0x000000123)"
        );
        assert_eq!(f64s(0.0), "0");
    }

    #[test]
    fn x87_long_doubles() {
        // 3.125, 0.1L, 1e4000L, NaN and an invalid encoding, as gdb 13 prints them.
        let ld = |mant: u64, exp: u16| {
            let mut b = [0u8; 10];
            b[..8].copy_from_slice(&mant.to_le_bytes());
            b[8..].copy_from_slice(&exp.to_le_bytes());
            b
        };
        assert_eq!(x87(ld(0xc800_0000_0000_0000, 0x4000)), "3.125");
        assert_eq!(
            x87(ld(0xcccc_cccc_cccc_cccd, 0x3ffb)),
            "0.100000000000000000001"
        );
        assert_eq!(
            x87(ld(0xc000_0000_0000_0000, 0x7fff)),
            "nan(0xc000000000000000)"
        );
        assert_eq!(x87(ld(0x8000_0000_0000_0000, 0xffff)), "-inf");
        assert_eq!(
            x87(ld(0x4000_0000_0000_0000, 0x3fff)),
            "<invalid float value>"
        );
        assert_eq!(x87(ld(0, 0)), "0");
    }

    #[test]
    fn rounding_is_half_even_on_exact_ties() {
        let mut s = String::new();
        format_g(&mut s, 25, -1, 1); // 12.5 -> "1e+01"
        assert_eq!(s, "1e+01");
        s.clear();
        format_g(&mut s, 35, -1, 1); // 17.5 -> "2e+01"
        assert_eq!(s, "2e+01");
        s.clear();
        format_g(&mut s, 5, -1, 1); // 2.5 -> "2"
        assert_eq!(s, "2");
        s.clear();
        format_g(&mut s, 999, 0, 2); // 999 -> "1e+03"
        assert_eq!(s, "1e+03");
    }
}
