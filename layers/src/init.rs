//! Parameter initialisation that is fast for big models. libtorch fills a tensor with
//! random numbers on one thread, a few nanoseconds per value, which makes random
//! initialisation most of the time it takes to build a 100M-parameter model. Here the
//! values come from a small counter-seeded generator (xoshiro256++) on all of
//! libtorch's threads. The seed is drawn from libtorch's generator, so
//! `tch::manual_seed` still makes builds reproducible, and the result does not depend
//! on the thread count.
use tch::{nn, Device, Kind, Tensor};

/// Values per independently seeded block: large enough to amortise seeding, small
/// enough to spread over threads.
const BLOCK: usize = 1 << 16;

struct Xoshiro256pp([u64; 4]);

impl Xoshiro256pp {
    /// Seeds the state with SplitMix64, as the xoshiro authors recommend.
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A float uniform in [0, 1) with 24 random bits.
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }
}

/// Fills `t` with values uniform in `[lo, up)`. Contiguous float32 CPU tensors are
/// filled in parallel; anything else falls back to libtorch's `uniform_`.
pub fn uniform_(t: &mut Tensor, lo: f64, up: f64) {
    let n = t.numel();
    if t.kind() != Kind::Float || t.device() != Device::Cpu || !t.is_contiguous() || n < BLOCK {
        tch::no_grad(|| {
            let _ = t.uniform_(lo, up);
        });
        return;
    }
    // One draw from libtorch's generator seeds everything, so manual_seed applies.
    let seed = Tensor::randint(i64::MAX, [1], (Kind::Int64, Device::Cpu)).int64_value(&[0]) as u64;
    fill_uniform(t, lo, up, seed);
}

/// The parallel fill of [`uniform_`] from `seed`: block `k` of 2^16 values comes from its
/// own generator seeded by `seed` and `k`, so the values do not depend on the threads.
fn fill_uniform(t: &mut Tensor, lo: f64, up: f64, seed: u64) {
    let n = t.numel();
    // SAFETY: `t` is a contiguous CPU float tensor of `n` elements that we borrow
    // mutably, so nothing else reads or writes it while the slice lives.
    let data = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
    let (lo, scale) = (lo as f32, (up - lo) as f32);
    let fill = |blocks: &mut [f32], first_block: usize| {
        for (i, block) in blocks.chunks_mut(BLOCK).enumerate() {
            let mut rng = Xoshiro256pp::new(
                seed ^ ((first_block + i) as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93),
            );
            for v in block {
                *v = lo + scale * rng.next_f32();
            }
        }
    };
    let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(BLOCK));
    let blocks_per_thread = n.div_ceil(BLOCK).div_ceil(threads);
    std::thread::scope(|s| {
        for (i, part) in data.chunks_mut(blocks_per_thread * BLOCK).enumerate() {
            let fill = &fill;
            s.spawn(move || fill(part, i * blocks_per_thread));
        }
    });
}

/// `nn.Linear(i, o)` with a Xavier-uniform weight (bound `sqrt(6 / (i + o))`) and a
/// zero bias, the initialisation of timm's and TerraTorch's ViTs, filled in parallel.
pub fn xavier_linear(p: nn::Path, i: i64, o: i64) -> nn::Linear {
    let mut lin = nn::linear(
        p,
        i,
        o,
        nn::LinearConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        },
    );
    let bound = (6.0 / (i + o) as f64).sqrt();
    uniform_(&mut lin.ws, -bound, bound);
    lin
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reproducibility is checked with an explicit seed: the tests of this crate run in
    /// parallel and draw from libtorch's one generator, so a `manual_seed` here could be
    /// followed by another test's draw before `uniform_`'s.
    #[test]
    fn uniform_fill_is_in_range_uniform_and_reproducible() {
        let n = 1 << 20;
        let mut a = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        uniform_(&mut a, -0.5, 1.5);
        let (min, max) = (a.min().double_value(&[]), a.max().double_value(&[]));
        assert!(min >= -0.5 && max < 1.5, "{min} {max}");
        let mean = a.mean(Kind::Double).double_value(&[]);
        let var = a.var(true).double_value(&[]);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((var - 4.0 / 12.0).abs() < 0.01, "variance {var}");
        // same seed, same values; whatever the thread count
        fill_uniform(&mut a, -0.5, 1.5, 7);
        let mut b = Tensor::zeros([n], (Kind::Float, Device::Cpu));
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        fill_uniform(&mut b, -0.5, 1.5, 7);
        tch::set_num_threads(threads);
        assert!(a.equal(&b));
        // another seed, other values
        fill_uniform(&mut b, -0.5, 1.5, 8);
        assert!(!a.equal(&b));
    }

    #[test]
    fn small_or_odd_tensors_fall_back_to_libtorch() {
        let mut t = Tensor::zeros([10], (Kind::Double, Device::Cpu));
        uniform_(&mut t, 2.0, 3.0);
        assert!(t.min().double_value(&[]) >= 2.0 && t.max().double_value(&[]) < 3.0);
    }

    #[test]
    fn xavier_linear_bounds() {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = xavier_linear(vs.root() / "fc", 512, 1024);
        let bound = (6.0f64 / 1536.0).sqrt();
        assert!(lin.ws.abs().max().double_value(&[]) <= bound);
        assert!(lin.ws.requires_grad());
        assert_eq!(
            lin.bs
                .as_ref()
                .unwrap()
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
    }
}
