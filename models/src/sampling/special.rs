//! Small numerical routines the samplers and schedules need and no dependency provides.
//!
//! - [`beta_ppf`]: the quantile function of the Beta distribution, which the A1111 "Beta"
//!   scheduler takes from `scipy.stats.beta.ppf`. Computed here by bisection on the regularized
//!   incomplete beta function, which converges to the last bit of an `f64`; the schedule rounds
//!   the result to `f32`, so agreement with SciPy to ~1e-12 is plenty.
//! - [`gauss_kronrod_21`]: the 21-point Gauss–Kronrod rule of QUADPACK's `QK21`. k-diffusion
//!   integrates the LMS coefficients with `scipy.integrate.quad`, whose first pass is exactly this
//!   rule over the whole interval. The integrands are polynomials of degree ≤ 3, which the rule
//!   integrates exactly, so QUADPACK's error estimate is at round-off level and it returns that
//!   first-pass value: evaluating the same rule reproduces SciPy's numbers to ~1e-16.
//! - [`solve`]: Gaussian elimination with partial pivoting for the tiny (≤ 3×3) systems of UniPC,
//!   where `torch.linalg.solve` (LAPACK `gesv`, also LU with partial pivoting) is used upstream.

/// Natural logarithm of the gamma function for `x > 0` (Lanczos, g = 7, n = 9; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEF: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection keeps the series in its accurate range.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = COEF[0];
    let t = x + G + 0.5;
    for (i, c) in COEF.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// One term `aa` of a continued fraction in the modified Lentz method: updates `c` and `d`
/// (kept away from 0) and returns the factor `d · c` of the running value.
fn lentz_step(aa: f64, c: &mut f64, d: &mut f64) -> f64 {
    const TINY: f64 = 1e-300;
    *d = 1.0 + aa * *d;
    if d.abs() < TINY {
        *d = TINY;
    }
    *c = 1.0 + aa / *c;
    if c.abs() < TINY {
        *c = TINY;
    }
    *d = 1.0 / *d;
    *d * *c
}

/// Continued fraction of the incomplete beta function (modified Lentz), valid for
/// `x < (a + 1) / (a + b + 2)`.
fn beta_continued_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // The even and the odd term of the fraction: each updates `c` and `d`, and `h` by
        // their product.
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        h *= lentz_step(aa, &mut c, &mut d);
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        let del = lentz_step(aa, &mut c, &mut d);
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)`.
pub fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(a, b, x) / a
    } else {
        // Symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the continued fraction convergent.
        1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b
    }
}

/// The quantile function (inverse CDF) of the Beta(a, b) distribution, as `scipy.stats.beta.ppf`.
/// `p` outside `[0, 1]` gives NaN, like SciPy; the endpoints map to 0 and 1 exactly.
pub fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return f64::NAN;
    }
    if p == 0.0 {
        return 0.0;
    }
    if p == 1.0 {
        return 1.0;
    }
    // The CDF is continuous and increasing on [0, 1]: bisect until the bracket cannot shrink.
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Abscissae of QUADPACK's 21-point Kronrod rule (`xgk` of `dqk21`), outermost first.
// The digits are QUADPACK's published ones, kept verbatim so they can be checked against it.
#[allow(clippy::excessive_precision)]
const XGK: [f64; 11] = [
    0.995_657_163_025_808_080_735_527_280_689_003,
    0.973_906_528_517_171_720_077_964_012_084_452,
    0.930_157_491_355_708_226_001_207_180_059_508,
    0.865_063_366_688_984_510_732_096_688_423_493,
    0.780_817_726_586_416_897_063_717_578_345_042,
    0.679_409_568_299_024_406_234_327_365_114_874,
    0.562_757_134_668_604_683_339_000_099_272_694,
    0.433_395_394_129_247_190_799_265_943_165_784,
    0.294_392_862_701_460_198_131_126_603_103_866,
    0.148_874_338_981_631_210_884_826_001_129_720,
    0.0,
];

/// Weights of the 21-point Kronrod rule (`wgk` of `dqk21`).
#[allow(clippy::excessive_precision)]
const WGK: [f64; 11] = [
    0.011_694_638_867_371_874_278_064_396_062_192,
    0.032_558_162_307_964_727_478_818_972_459_390,
    0.054_755_896_574_351_996_031_381_300_244_580,
    0.075_039_674_810_919_952_767_043_140_916_190,
    0.093_125_454_583_697_605_535_065_465_083_366,
    0.109_387_158_802_297_641_899_210_590_325_805,
    0.123_491_976_262_065_851_077_208_034_962_016,
    0.134_709_217_311_473_325_928_054_001_771_707,
    0.142_775_938_577_060_080_797_094_273_138_717,
    0.147_739_104_901_338_491_374_841_515_972_068,
    0.149_445_554_002_916_905_664_936_468_389_821,
];

/// `∫_a^b f`, by QUADPACK's 21-point Gauss–Kronrod rule (one panel, no adaptivity), summed in the
/// order `dqk21` sums: the centre, then the Gauss abscissae, then the Kronrod-only abscissae.
pub fn gauss_kronrod_21(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    let centre = 0.5 * (a + b);
    let half = 0.5 * (b - a);
    let mut sum = WGK[10] * f(centre);
    // The 10-point Gauss nodes are the odd (1-based even) entries of XGK.
    for j in 0..5 {
        let k = 2 * j + 1;
        let dx = half * XGK[k];
        sum += WGK[k] * (f(centre - dx) + f(centre + dx));
    }
    for j in 0..5 {
        let k = 2 * j;
        let dx = half * XGK[k];
        sum += WGK[k] * (f(centre - dx) + f(centre + dx));
    }
    sum * half
}

/// Solves `m · x = rhs` for a small dense square system (row-major `m`) by Gaussian elimination
/// with partial pivoting. Returns `None` for a singular matrix.
pub fn solve(m: &[Vec<f64>], rhs: &[f64]) -> Option<Vec<f64>> {
    let n = rhs.len();
    let mut a: Vec<Vec<f64>> = m.iter().map(|row| row[..n].to_vec()).collect();
    let mut b = rhs.to_vec();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col] == 0.0 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (upper, lower) = a.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for (offset, row) in lower.iter_mut().enumerate() {
            let factor = row[col] / pivot_row[col];
            for (v, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= factor * p;
            }
            b[col + 1 + offset] -= factor * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let mut acc = b[row];
        for (coef, xv) in a[row][row + 1..].iter().zip(&x[row + 1..]) {
            acc -= coef * xv;
        }
        x[row] = acc / a[row][row];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_ppf_symmetric_median_is_half() {
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-14);
    }

    #[test]
    fn beta_ppf_inverts_cdf() {
        for &p in &[1e-6, 0.01, 0.3, 0.77, 0.999] {
            let x = beta_ppf(p, 0.6, 0.9);
            assert!((beta_cdf(x, 0.6, 0.9) - p).abs() < 1e-13, "p={p}");
        }
    }

    #[test]
    fn beta_cdf_uniform_case_is_identity() {
        // Beta(1, 1) is the uniform distribution.
        for &x in &[0.1, 0.25, 0.9] {
            assert!((beta_cdf(x, 1.0, 1.0) - x).abs() < 1e-14);
        }
    }

    #[test]
    fn gauss_kronrod_21_cubic_is_exact() {
        let f = |t: f64| 3.0 * t * t * t - 2.0 * t + 1.0;
        let exact = |t: f64| 0.75 * t.powi(4) - t * t + t;
        let got = gauss_kronrod_21(f, 0.3, 2.5);
        assert!((got - (exact(2.5) - exact(0.3))).abs() < 1e-13);
    }

    #[test]
    fn solve_small_system_recovers_solution() {
        let m = vec![vec![2.0, 1.0, -1.0], vec![-3.0, -1.0, 2.0], vec![-2.0, 1.0, 2.0]];
        let x = solve(&m, &[8.0, -11.0, -3.0]).unwrap();
        for (got, want) in x.iter().zip([2.0, 3.0, -1.0]) {
            assert!((got - want).abs() < 1e-12);
        }
    }
}
