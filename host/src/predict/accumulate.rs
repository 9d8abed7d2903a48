//! The strip accumulator: TerraTorch's `preds` and `preds_count`
//! (`generate_tiled_inference_output`) for only the frame rows that chips still touch.
//! With `average_patches` a chip adds `prediction * blend_mask` and its mask; without,
//! the chip's prediction replaces what is there when it comes later in TerraTorch's order
//! (its rank is higher), and the mask is still added to the count. Rows that no chip
//! still to come can touch are taken out finished; memory is O(strip x width).
use crate::error::{HostError, Result};
use tch::{Device, Kind, Tensor};

pub struct Strip {
    /// The first frame row held.
    pub base: usize,
    channels: i64,
    width: i64,
    average: bool,
    /// `[C, rows, width]` float32.
    sum: Tensor,
    /// `[rows, width]` float32.
    count: Tensor,
    /// `[rows, width]` int64 rank of the chip whose value is held (`average: false`).
    rank: Option<Tensor>,
}

impl Strip {
    pub fn new(channels: i64, width: usize, average: bool) -> Self {
        let w = width as i64;
        Self {
            base: 0,
            channels,
            width: w,
            average,
            sum: Tensor::zeros([channels, 0, w], (Kind::Float, Device::Cpu)),
            count: Tensor::zeros([0, w], (Kind::Float, Device::Cpu)),
            rank: (!average).then(|| Tensor::full([0, w], -1i64, (Kind::Int64, Device::Cpu))),
        }
    }

    fn rows(&self) -> usize {
        self.count.size()[0] as usize
    }

    /// Makes rows up to `end` (exclusive) present.
    fn extend_to(&mut self, end: usize) {
        let have = self.base + self.rows();
        if end <= have {
            return;
        }
        let n = (end - have) as i64;
        let z = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        self.sum = Tensor::cat(&[&self.sum, &z(&[self.channels, n, self.width])], 1);
        self.count = Tensor::cat(&[&self.count, &z(&[n, self.width])], 0);
        if let Some(r) = &self.rank {
            let more = Tensor::full([n, self.width], -1i64, (Kind::Int64, Device::Cpu));
            self.rank = Some(Tensor::cat(&[r, &more], 0));
        }
    }

    /// Adds one chip's kept prediction `[C, h, w]` at frame rows `r0..`, columns `c0..`.
    pub fn add(
        &mut self,
        pred: &Tensor,
        mask: &Tensor,
        r0: usize,
        c0: usize,
        rank: usize,
    ) -> Result<()> {
        let (h, w) = (pred.size()[1], pred.size()[2]);
        if pred.size()[0] != self.channels {
            return Err(HostError::Usage(format!(
                "the model gave {} output channels for one chip and {} for another",
                pred.size()[0],
                self.channels
            )));
        }
        if r0 < self.base {
            return Err(HostError::Usage(format!(
                "internal: chip at frame row {r0} arrived after row {} was written",
                self.base
            )));
        }
        self.extend_to(r0 + h as usize);
        let rr = (r0 - self.base) as i64;
        let cc = c0 as i64;
        let mut sum = self.sum.narrow(1, rr, h).narrow(2, cc, w);
        let mut count = self.count.narrow(0, rr, h).narrow(1, cc, w);
        if self.average {
            sum += pred * mask;
        } else {
            let rank_view = self.rank.as_ref().expect("rank kept without averaging");
            let mut rk = rank_view.narrow(0, rr, h).narrow(1, cc, w);
            let later = rk.lt(rank as i64);
            let merged = pred.where_self(&later, &sum);
            sum.copy_(&merged);
            let _ = rk.masked_fill_(&later, rank as i64);
        }
        count += mask;
        Ok(())
    }

    /// Takes the rows before frame row `end` out: the values `[C, n, width]` (averaged
    /// when averaging) and the summed masks `[n, width]`, where 0 means no chip covered
    /// the pixel (the caller checks the scene's part, as TerraTorch checks after
    /// removing the padding).
    pub fn take_until(&mut self, end: usize) -> Option<(Tensor, Tensor)> {
        if end <= self.base {
            return None;
        }
        self.extend_to(end);
        let n = (end - self.base) as i64;
        let rest = self.rows() as i64 - n;
        let sum = self.sum.narrow(1, 0, n);
        let count = self.count.narrow(0, 0, n).copy();
        let out = if self.average {
            &sum / count.unsqueeze(0)
        } else {
            sum.copy()
        };
        self.sum = self.sum.narrow(1, n, rest).copy();
        self.count = self.count.narrow(0, n, rest).copy();
        if let Some(r) = &self.rank {
            self.rank = Some(r.narrow(0, n, rest).copy());
        }
        self.base = end;
        Some((out, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_weights_by_the_masks() {
        let mut s = Strip::new(1, 3, true);
        let ones = Tensor::ones([1, 2, 2], (Kind::Float, Device::Cpu));
        let m = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
        s.add(&(&ones * 2.0), &m, 0, 0, 0).unwrap();
        s.add(&(&ones * 4.0), &(&m * 3.0), 0, 1, 1).unwrap();
        let (out, _) = s.take_until(2).unwrap();
        let v: Vec<f32> = out.flatten(0, -1).try_into().unwrap();
        // column 0: 2; column 1: (2*1 + 4*3)/4 = 3.5; column 2: 4
        assert_eq!(v, vec![2.0, 3.5, 4.0, 2.0, 3.5, 4.0]);
    }

    #[test]
    fn without_averaging_the_higher_rank_wins_whatever_the_order() {
        let mut s = Strip::new(1, 2, false);
        let ones = Tensor::ones([1, 1, 2], (Kind::Float, Device::Cpu));
        let m = Tensor::ones([1, 2], (Kind::Float, Device::Cpu));
        s.add(&(&ones * 7.0), &m, 0, 0, 5).unwrap();
        s.add(&(&ones * 3.0), &m, 0, 0, 2).unwrap(); // earlier in TerraTorch's order: loses
        let v: Vec<f32> = s
            .take_until(1)
            .unwrap()
            .0
            .flatten(0, -1)
            .try_into()
            .unwrap();
        assert_eq!(v, vec![7.0, 7.0]);
    }

    #[test]
    fn an_uncovered_pixel_has_count_zero() {
        let mut s = Strip::new(1, 2, true);
        let m = Tensor::ones([1, 1], (Kind::Float, Device::Cpu));
        s.add(
            &Tensor::ones([1, 1, 1], (Kind::Float, Device::Cpu)),
            &m,
            0,
            0,
            0,
        )
        .unwrap();
        let (_, count) = s.take_until(1).unwrap();
        let c: Vec<f32> = count.flatten(0, -1).try_into().unwrap();
        assert_eq!(c, vec![1.0, 0.0]);
    }
}
