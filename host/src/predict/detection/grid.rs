//! Where the detection tiles of a scene lie, and which detections at a tile's edge are
//! left to its neighbour.
//!
//! Along each axis the tiles start at `0, s, 2s, ...` with the stride `s = tile - overlap`,
//! and the last one is flush with the scene's end (so it may overlap its neighbour by
//! more). A scene no longer than the tile along an axis is one tile of the scene's
//! length there; a scene that fits one tile is one forward, as in TerraTorch.
//!
//! **The edge rule.** An edge of a tile is *inner* when a neighbouring tile lies across
//! it (not the scene's border). A detection is dropped when its box comes within
//! [`EDGE_TOLERANCE`] pixels of an inner edge *and* its extent across that edge is less
//! than the two tiles' overlap minus twice [`EDGE_TOLERANCE`]: such a box lies inside the
//! strip both tiles see, and an object no larger than that is whole in the neighbour,
//! away from its edges, so the neighbour's detection stands for it. A box at an inner
//! edge that is wider than the overlap is kept: its object cannot be whole in any tile,
//! and the pieces meet in the scene-wide NMS instead.
//!
//! With `overlap <= tile / 2` (checked), every object at most `overlap - 2` pixels wide and
//! high is whole, and away from inner edges, in at least one tile.

/// How close (in pixels) a box must come to an inner tile edge to count as touching it:
/// the frameworks clip boxes to the image, so a cut box ends on the edge, give or take
/// the regression's rounding.
pub const EDGE_TOLERANCE: f64 = 1.0;

/// The tile starts along one axis of length `n`, for tiles of `tile` pixels overlapping
/// by `overlap`; with the length of every tile along this axis.
pub fn starts(n: usize, tile: usize, overlap: usize) -> (Vec<usize>, usize) {
    if n <= tile {
        return (vec![0], n);
    }
    let stride = tile - overlap;
    let mut v: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|s| s + tile < n)
        .collect();
    v.push(n - tile);
    v.dedup();
    (v, tile)
}

/// One tile: its window in the scene and how much it overlaps each neighbour (`None`:
/// no neighbour there, the scene's border).
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    pub x0: usize,
    pub y0: usize,
    pub width: usize,
    pub height: usize,
    /// Overlap with the neighbour on the left, top, right, bottom.
    pub overlaps: [Option<usize>; 4],
}

impl Tile {
    /// Whether a box `(x1, y1, x2, y2)` in this tile's pixels is left to a neighbour by
    /// the edge rule (module docs).
    pub fn leaves_to_neighbour(&self, b: [f64; 4]) -> bool {
        let (w, h) = (self.width as f64, self.height as f64);
        let near = [
            b[0] <= EDGE_TOLERANCE,
            b[1] <= EDGE_TOLERANCE,
            b[2] >= w - EDGE_TOLERANCE,
            b[3] >= h - EDGE_TOLERANCE,
        ];
        let extent = [b[2] - b[0], b[3] - b[1], b[2] - b[0], b[3] - b[1]];
        (0..4).any(|e| match self.overlaps[e] {
            Some(o) => near[e] && extent[e] < o as f64 - 2.0 * EDGE_TOLERANCE,
            None => false,
        })
    }
}

/// The tiles of an `h x w` scene, row by row.
pub fn tiles(h: usize, w: usize, tile: (usize, usize), overlap: (usize, usize)) -> Vec<Tile> {
    let (rows, th) = starts(h, tile.0, overlap.0);
    let (cols, tw) = starts(w, tile.1, overlap.1);
    let between = |v: &[usize], i: usize, j: usize, len: usize| v[i.min(j)] + len - v[i.max(j)];
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for (r, &y0) in rows.iter().enumerate() {
        for (c, &x0) in cols.iter().enumerate() {
            out.push(Tile {
                x0,
                y0,
                width: tw,
                height: th,
                overlaps: [
                    (c > 0).then(|| between(&cols, c - 1, c, tw)),
                    (r > 0).then(|| between(&rows, r - 1, r, th)),
                    (c + 1 < cols.len()).then(|| between(&cols, c, c + 1, tw)),
                    (r + 1 < rows.len()).then(|| between(&rows, r, r + 1, th)),
                ],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_scene_with_the_last_one_flush() {
        assert_eq!(starts(100, 128, 32), (vec![0], 100));
        assert_eq!(starts(128, 128, 32), (vec![0], 128));
        assert_eq!(starts(300, 128, 32), (vec![0, 96, 172], 128));
        assert_eq!(starts(224, 128, 32), (vec![0, 96], 128));
        let t = tiles(300, 100, (128, 128), (32, 32));
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].overlaps, [None, Some(32), None, Some(52)]);
        assert_eq!(t[2].overlaps, [None, Some(52), None, None]);
    }

    #[test]
    fn only_small_boxes_at_inner_edges_are_left_to_the_neighbour() {
        let t = Tile {
            x0: 0,
            y0: 0,
            width: 64,
            height: 64,
            overlaps: [None, None, Some(32), None],
        };
        // Cut by the right (inner) edge, inside the overlap strip: the neighbour has it.
        assert!(t.leaves_to_neighbour([50.0, 10.0, 64.0, 20.0]));
        assert!(t.leaves_to_neighbour([50.0, 10.0, 63.2, 20.0]));
        // Wider than the overlap: no tile sees it whole, keep the piece.
        assert!(!t.leaves_to_neighbour([20.0, 10.0, 64.0, 20.0]));
        // At the scene's border (left, top, bottom): kept.
        assert!(!t.leaves_to_neighbour([0.0, 0.0, 10.0, 64.0]));
        // Away from the edge.
        assert!(!t.leaves_to_neighbour([40.0, 10.0, 60.0, 20.0]));
    }
}
