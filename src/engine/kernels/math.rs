//! Scalar mathematics of the CPU kernels: exp and ln that vectorise, and the one lgamma/digamma
//! series (with the product form for small counts) that the likelihood and ln(x!) share.

/// For a small integer count `x` (up to 16): `prod_{j < x} (t + j)`, whose log is
/// `lgamma(x + t) - lgamma(t)`, and `digamma(x + t) - digamma(t) = sum_j 1 / (t + j)`, as the
/// product's derivative over the product (one division). None for other counts.
#[inline(always)]
pub fn product_form(x: f64, t: f64) -> Option<(f64, f64)> {
    // At most 16 factors below 1e15 each: no overflow.
    if !((0.0..=16.0).contains(&x) && (x as u32) as f64 == x && t < 1e15) {
        return None;
    }
    let (mut p, mut dp) = (1.0, 0.0);
    for j in 0..x as u32 {
        let z = t + j as f64;
        dp = dp * z + p;
        p *= z;
    }
    Some((p, dp / p))
}

/// `lgamma(x + t) - lgamma(t)` and `digamma(x + t) - digamma(t)`, for `x >= 0`, `t > 0`: the
/// product form for the small integer counts of real data, series otherwise.
pub fn lgamma_digamma_diff(x: f64, t: f64) -> (f64, f64) {
    if let Some((p, d)) = product_form(x, t) {
        return (ln_f64(p), d);
    }
    let (a, da) = lgamma_digamma(x + t);
    let (b, db) = lgamma_digamma(t);
    (a - b, da - db)
}

/// ln(p) for a positive normal f64, to about 1e-7 absolute: the exponent exactly, the mantissa
/// (in [1, 2)) by the single-precision `fast_ln` (a libm log costs as much as the rest of the
/// per-nonzero work).
#[inline(always)]
pub fn ln_f64(p: f64) -> f64 {
    let bits = p.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    e as f64 * std::f64::consts::LN_2 + fast_ln(m as f32) as f64
}

/// `lgamma(z)` and `digamma(z)` for `z > 0`: recurrence up to z >= 10, then the asymptotic series
/// (error below 1e-12 there).
fn lgamma_digamma(mut z: f64) -> (f64, f64) {
    let (mut prod, mut dg) = (1.0f64, 0.0);
    while z < 10.0 {
        prod *= z;
        dg -= 1.0 / z;
        z += 1.0;
    }
    let mut lg = if prod == 1.0 { 0.0 } else { -prod.ln() };
    let inv = 1.0 / z;
    let inv2 = inv * inv;
    let ln_z = z.ln();
    lg += (z - 0.5) * ln_z - z
        + 0.5 * (2.0 * std::f64::consts::PI).ln()
        + inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)));
    dg += ln_z - 0.5 * inv - inv2 * (1.0 / 12.0 - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 / 240.0)));
    (lg, dg)
}

/// exp(x) to about 2 ulp for x in [-87, 88] (Cephes' expf polynomial), branch-free so that loops
/// over it vectorise.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x / ln 2 to the nearest integer with the 1.5 * 2^23 trick (no libm call).
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let r2 = r * r;
    let p =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let y = p * r2 + r + 1.0;
    f32::from_bits(((n as i32 + 127) << 23) as u32) * y
}

/// ln(x) for normal positive x to about 2 ulp (Cephes' logf polynomial), branch-free.
#[inline(always)]
pub fn fast_ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    // Mantissa in [0.5, 1).
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let small = m < SQRT_HALF;
    e -= i32::from(small);
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let z = m * m;
    let mut y = (((((((7.037_683_6e-2 * m - 0.115_146_1) * m + 0.116_769_98) * m - 0.124_201_41) * m + 0.142_493_23)
        * m
        - 0.166_680_57)
        * m
        + 0.200_007_15)
        * m
        - 0.249_999_94)
        * m
        + 0.333_333_3;
    y *= m * z;
    let ef = e as f32;
    y += ef * -2.121_944_4e-4;
    y += -0.5 * z;
    m + y + ef * 0.693_359_4
}

/// ln(x!) = lgamma(x + 1): a table of sums of logs for the small integer counts of real data,
/// the series of `lgamma_digamma` otherwise.
pub fn ln_factorial(x: f64) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    // `as` saturates (negative and NaN to 0): the comparison keeps only exact small integers.
    let k = x as usize;
    if k < 1024 && k as f64 == x {
        let t = TABLE.get_or_init(|| {
            let mut t = vec![0.0; 1024];
            for k in 2..1024 {
                t[k] = t[k - 1] + (k as f64).ln();
            }
            t
        });
        return t[k];
    }
    lgamma_digamma(x + 1.0).0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_ln_match_libm() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (a, b) = (fast_exp(x), x.exp());
            assert!((a - b).abs() <= 4e-7 * b, "exp({x}): {a} vs {b}");
            x += 0.37;
        }
        for &x in &[
            1e-30f32, 1e-8, 0.001, 0.5, 0.70710677, 0.7072, 1.0, 1.5, 2.0, 3.7, 1e3, 1e8, 3e38,
        ] {
            let (a, b) = (fast_ln(x), x.ln());
            assert!((a - b).abs() <= 3e-7 * b.abs().max(1.0), "ln({x}): {a} vs {b}");
        }
    }

    #[test]
    fn ln_factorial_matches_libtorch_lgamma() {
        for x in [
            0.0, 1.0, 2.0, 3.0, 7.0, 63.0, 64.0, 100.0, 1023.0, 1024.0, 12345.0, 0.5, 2.7, 9.99,
        ] {
            let want = tch::Tensor::from(x + 1.0).lgamma().double_value(&[]);
            let got = ln_factorial(x);
            assert!((got - want).abs() < 1e-8 * want.abs().max(1.0), "{x}: {got} vs {want}");
        }
    }
}
