//! One LSTM layer, input projection and whole recurrence, as a single candle custom op with a
//! hand-written backward pass through time (CPU, f32).
//!
//! Why: candle's autograd of a per-step `narrow` builds a zero-padded gradient as large as the
//! whole sequence for every step (O(T^2) memory traffic, DESIGN.md "Measured pitfalls"), and
//! even the differentiated input projection cost as much as the recurrence in a measured
//! training step. Here:
//! - forward: one GEMM `x W_ih^T` for all steps; per step, on a team of threads that each own a
//!   slice of the hidden units or whole tiles of the batch ([`TeamSplit`], [`super::team`]), the
//!   product `h_{t-1} W_hh^T` for their part on weights packed once ([`super::kernels`]) and one
//!   vectorised pass over their gates ([`super::gates`]), then (by units) one barrier;
//! - backward: per step, the gate derivatives of a member's part, (by units) a barrier, and the
//!   product `da_t W_hh` for its part; then `dW_ih` and `dW_hh` (GEMMs over the rows `x_t` and
//!   `h_{t-1}` of `[x_t | h_{t-1}]`), the bias and `dx` as single large GEMMs over all steps.
//!
//! Inputs: `x [B, T, In]`; `w [4H, In + H]` = `W_ih | W_hh` (gate order i, f, g, o as
//! PyTorch); `extra [4H + 2 B H]` = the summed bias, `h_0 [B, H]`, `c_0 [B, H]`. Layer 0 may
//! take event ids instead of `x` ([`LayerInput::Ids`]).
//! Output `[B, T + 1, H]`: `h_1 .. h_T`, then the final cell state `c_T` in the last row.
//! The hand-run training step calls the same passes with `W_ih` and `W_hh` as two operands
//! ([`FusedLstmOp::forward_parts`], [`FusedLstmOp::backward_parts`]), outside candle's graph.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::cpu_values::{poisoned, storage_values, take_saved, with_values};
use super::gates::{BackwardRow, ForwardRow, GateInput, Simd};
use super::kernels::{Kernel, PANEL, Panels};
use super::matmul::matmul;
use super::scratch;
use super::team::{SharedMut, column_parts, run_team, share, team_size};
use super::tiling::{TILE_ROWS, store_tile, tiled_index, tiled_len, tiled_span};

/// What the backward pass needs from the forward pass (all time-major).
struct Saved {
    /// Activated gates i, f, g, o: `[T, B, 4H]`.
    gates: Vec<f32>,
    /// `c_0 .. c_T`: `[T + 1, B, H]`.
    cells: Vec<f32>,
    /// Rows `[x_t | h_{t-1}]`: `[T + 1, B, In + H]` (block `T` holds only `h_T`); the first `T`
    /// blocks are the right operand of the single `dW = da^T [x | h]` GEMM.
    xh: Vec<f32>,
}

/// What the op's first input is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerInput {
    /// Vectors `x [B, T, In]` (f32); `w` is `[W_ih | W_hh]`.
    Dense,
    /// The whole output of the fused layer below, `[B, T + 1, In]` (f32): its `h_1 .. h_T`,
    /// then its final cell state, which is not an input (its gradient is zero); `w` is
    /// `[W_ih | W_hh]`. Taking it whole saves the `narrow` and the copy between layers, and in
    /// the backward pass their gradient's zero-padding, copy and accumulation (each a pass over
    /// megabytes).
    Stacked,
    /// Event ids `[B, T]` (u32) into a vocabulary of `V`; `w` is `[W_ih E^T | W_hh]`, i.e.
    /// `[4H, V + H]` whose first `V` columns are the input projection of each id. Layer 0 reads
    /// an embedding, so its input projection is a table lookup: no `x W_ih^T`, `dW_ih` or `dx`
    /// GEMMs (12 % of a reference training step), only a scatter of the gate gradients per id.
    Ids,
}

pub struct FusedLstmOp {
    keep_for_backward: bool,
    split: TeamSplit,
    input_kind: LayerInput,
    kernel: Kernel,
    simd: Simd,
    saved: Mutex<Option<Saved>>,
    #[cfg(feature = "cuda")]
    saved_cuda: Mutex<Option<super::cuda_lstm::CudaSaved>>,
}

impl FusedLstmOp {
    /// `keep_for_backward`: store activations (training); inference skips that memory.
    pub fn new(keep_for_backward: bool, input_kind: LayerInput) -> Self {
        FusedLstmOp {
            keep_for_backward,
            split: TeamSplit::Auto,
            input_kind,
            kernel: Kernel::detect(),
            simd: Simd::detect(),
            saved: Mutex::new(None),
            #[cfg(feature = "cuda")]
            saved_cuda: Mutex::new(None),
        }
    }

    /// What the op's first input is.
    pub fn input_kind(&self) -> LayerInput {
        self.input_kind
    }

    /// The op with the forward pass's team divided as `split` says (tests compare the two).
    pub fn with_team_split(mut self, split: TeamSplit) -> Self {
        self.split = split;
        self
    }
}

/// How the thread team divides a step, forward and backward. Both give the same bits: every
/// output is the same kernel's sum over the same `k`, by whichever member, and the backward
/// pass's sums over rows run in the same order either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TeamSplit {
    /// By rows where that keeps as many members busy as by units and the weights allow it.
    #[default]
    Auto,
    /// Each member owns some hidden units of every row; the members meet after every step.
    Units,
    /// Each member owns whole 8-row tiles of the batch and every unit: a sequence's rows depend
    /// only on themselves, so the members never wait for each other, and no member reads what
    /// another just wrote. Each then streams all of `W_hh`, not its share.
    Rows,
}

impl TeamSplit {
    /// Whether a pass over `b` rows and `h` units divides by rows, given the team that dividing
    /// by units would have.
    fn by_rows(self, b: usize, h: usize, unit_threads: usize) -> bool {
        match self {
            TeamSplit::Units => false,
            TeamSplit::Rows => true,
            TeamSplit::Auto => {
                // docs/BENCHMARKS.md, issue 14 fifth pass: without the barrier the bundled size's
                // forward took 0.90x the time (median of five pairs). Seventh pass: at the
                // reference size (8 rows per member each streaming a 4 MB W_hh, H512) the team's
                // passes took 0.90-0.95x the time of the split by units, both splits interleaved
                // step by step in one process; a kernel-only measurement had put the streaming
                // kernel at ~0.85x. 16 rows per member read each weight as often as the split by
                // units does at B16; past 4 MB that is unmeasured, and units keep their share of
                // W_hh in cache.
                let tiles = b.div_ceil(TILE_ROWS);
                let weights = 4 * h * h * std::mem::size_of::<f32>();
                unit_threads > 1
                    && tiles >= unit_threads
                    && (b / unit_threads >= 2 * TILE_ROWS || weights <= 4 << 20)
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    /// Rows per sequence of `x`: `t`, or `t + 1` for [`LayerInput::Stacked`].
    x_steps: usize,
    /// `In` (dense) or `V` (ids): the columns of `w` before `W_hh`.
    input: usize,
    h: usize,
    /// Columns of an `xh` row before `h_{t-1}`: `In` (dense) or 0 (ids carry no vectors).
    x_width: usize,
}

impl Dims {
    fn of(x: &Shape, w: &Shape, extra: &Shape, kind: LayerInput) -> Result<Dims> {
        let (four_h, width) = w.dims2()?;
        let h = four_h / 4;
        let (b, x_steps, input, x_width) = match kind {
            LayerInput::Dense | LayerInput::Stacked => {
                let (b, t, input) = x.dims3()?;
                (b, t, input, input)
            }
            LayerInput::Ids => {
                let (b, t) = x.dims2()?;
                (b, t, width.saturating_sub(h), 0)
            }
        };
        let t = match kind {
            LayerInput::Stacked => x_steps.saturating_sub(1),
            _ => x_steps,
        };
        let fits = h > 0
            && four_h == 4 * h
            && width == input + h
            && extra.dims1()? == 4 * h + 2 * b * h
            && (kind != LayerInput::Stacked || x_steps > 0);
        if !fits {
            bail!("fused LSTM: shapes {x:?} {w:?} {extra:?} do not fit together")
        }
        Ok(Dims {
            b,
            t,
            x_steps,
            input,
            h,
            x_width,
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_sizes(&self) -> super::cuda_lstm::Sizes {
        super::cuda_lstm::Sizes {
            b: self.b,
            t: self.t,
            input: self.input,
            h: self.h,
        }
    }

    /// Panels of 32 hidden units: the indivisible share of a team member.
    fn unit_panels(&self) -> usize {
        self.h.div_ceil(PANEL)
    }

    /// Row width of `w`.
    fn w_width(&self) -> usize {
        self.input + self.h
    }

    /// Row width of `xh`.
    fn xh_width(&self) -> usize {
        self.x_width + self.h
    }
}

/// The hidden units (`units`) and unit panels (`panels`) a team member owns.
struct Share {
    panels: std::ops::Range<usize>,
    units: std::ops::Range<usize>,
}

impl Share {
    fn of(d: &Dims, member: usize, threads: usize) -> Share {
        let panels = share(d.unit_panels(), member, threads);
        let units = (panels.start * PANEL).min(d.h)..(panels.end * PANEL).min(d.h);
        Share { panels, units }
    }

    /// Padded width of the member's per-gate scratch rows.
    fn width(&self) -> usize {
        self.panels.len() * PANEL
    }
}

/// How one pass's team divides the work: its size, and each member's units and rows.
struct TeamPlan {
    by_rows: bool,
    threads: usize,
}

impl TeamPlan {
    fn of(split: TeamSplit, d: &Dims) -> TeamPlan {
        let unit_threads = team_size(d.unit_panels());
        let by_rows = split.by_rows(d.b, d.h, unit_threads);
        let threads = if by_rows {
            team_size(d.b.div_ceil(TILE_ROWS))
        } else {
            unit_threads
        };
        TeamPlan { by_rows, threads }
    }

    /// By rows: whole tiles of the batch and every unit; by units: some units of every row.
    fn member(&self, d: &Dims, member: usize) -> (Share, std::ops::Range<usize>) {
        if self.by_rows {
            let tiles = share(d.b.div_ceil(TILE_ROWS), member, self.threads);
            let rows = tiles.start * TILE_ROWS..(tiles.end * TILE_ROWS).min(d.b);
            (Share::of(d, 0, 1), rows)
        } else {
            (Share::of(d, member, self.threads), 0..d.b)
        }
    }
}

/// `[A, B, C]` row-major to `[B, A', C]` (`A' >= A`), rows `A..A'` of each block zero.
fn swap_leading(src: &[f32], (a, a_out): (usize, usize), b: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; a_out * b * c];
    out.par_chunks_mut(a_out * c)
        .enumerate()
        .for_each(|(j, block)| {
            for (i, row) in block.chunks_exact_mut(c).take(a).enumerate() {
                row.copy_from_slice(&src[(i * b + j) * c..(i * b + j + 1) * c]);
            }
        });
    out
}

/// The layer's weights as the CPU passes read them: `W_ih` (layer 0: the per-id table) `[4H, In]`
/// and `W_hh [4H, H]`, each row-major with its own row stride. Two views of one `[W_ih | W_hh]`
/// (the candle op's operand) or two tensors of their own ([`FusedLstmOp::forward_parts`]),
/// which spares the concatenation every step and the split of its gradient.
#[derive(Clone, Copy)]
struct Weights<'a> {
    ih: &'a [f32],
    ih_stride: usize,
    hh: &'a [f32],
    hh_stride: usize,
}

impl<'a> Weights<'a> {
    /// The two parts of `w = [W_ih | W_hh]`.
    fn joined(w: &'a [f32], d: &Dims) -> Weights<'a> {
        let ww = d.w_width();
        Weights {
            ih: w,
            ih_stride: ww,
            hh: &w[d.input..],
            hh_stride: ww,
        }
    }

    fn parts(ih: &'a [f32], hh: &'a [f32], d: &Dims) -> Result<Weights<'a>> {
        let four_h = 4 * d.h;
        if ih.len() != four_h * d.input || hh.len() != four_h * d.h {
            bail!(
                "fused LSTM: weights of {} and {} values for H {}",
                ih.len(),
                hh.len(),
                d.h
            )
        }
        Ok(Weights {
            ih,
            ih_stride: d.input,
            hh,
            hh_stride: d.h,
        })
    }

    /// Runs `f` on the values of `W_ih` and `W_hh`, two tensors of their own, read in place.
    fn with_parts<R>(
        w_ih: &Tensor,
        w_hh: &Tensor,
        d: &Dims,
        f: impl FnOnce(Weights) -> Result<R>,
    ) -> Result<R> {
        with_values(w_ih, |ih: &[f32]| {
            with_values(w_hh, |hh: &[f32]| f(Weights::parts(ih, hh, d)?))
        })
    }
}

/// The forward pass's first operand, read in place.
enum InputValues<'a> {
    Vectors(&'a [f32]),
    Ids(&'a [u32]),
}

/// The weight gradients of one backward pass, as the two parts of `w`.
struct WeightGradients {
    dx: Option<Tensor>,
    /// `[4H, In]`.
    dw_ih: Vec<f32>,
    /// `[4H, H]`.
    dw_hh: Vec<f32>,
    /// `[4H + 2 B H]`: the bias, `h_0` and `c_0` gradients.
    dextra: Vec<f32>,
}

/// [`FusedLstmOp::backward_parts`]' gradients.
pub struct PartGradients {
    /// The input's, for vectors (none for ids).
    pub dx: Option<Tensor>,
    pub dw_ih: Tensor,
    pub dw_hh: Tensor,
    /// Of `extra`: the bias, `h_0` and `c_0`.
    pub dextra: Tensor,
}

impl FusedLstmOp {
    /// The CPU forward pass on `W_ih` (or the per-id table) and `W_hh` as separate tensors, not
    /// concatenated: for the hand-run training step ([`super::direct_gradients`]), which calls
    /// [`FusedLstmOp::backward_parts`] itself. The output carries no autograd graph.
    pub fn forward_parts(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh: &Tensor,
        extra: &Tensor,
    ) -> Result<Tensor> {
        let d = self.part_dims(x, w_ih, w_hh, extra)?;
        let out = Weights::with_parts(w_ih, w_hh, &d, |weights| {
            with_values(extra, |extra: &[f32]| match self.input_kind {
                LayerInput::Dense | LayerInput::Stacked => with_values(x, |x: &[f32]| {
                    self.forward_values(d, InputValues::Vectors(x), weights, extra)
                }),
                LayerInput::Ids => with_values(x, |ids: &[u32]| {
                    self.forward_values(d, InputValues::Ids(ids), weights, extra)
                }),
            })
        })?;
        Tensor::from_vec(out, (d.b, d.t + 1, d.h), x.device())
    }

    /// The backward pass of [`FusedLstmOp::forward_parts`], given the gradient of its output.
    pub fn backward_parts(
        &self,
        x: &Tensor,
        w_ih: &Tensor,
        w_hh: &Tensor,
        extra: &Tensor,
        grad: &Tensor,
    ) -> Result<PartGradients> {
        let d = self.part_dims(x, w_ih, w_hh, extra)?;
        let saved = take_saved(&self.saved, "fused LSTM")?;
        let device = x.device();
        let g = with_values(grad, |grad: &[f32]| {
            Weights::with_parts(w_ih, w_hh, &d, |weights| {
                self.backward_of(d, saved, grad, weights, x)
            })
        })?;
        let four_h = 4 * d.h;
        Ok(PartGradients {
            dx: g.dx,
            dw_ih: Tensor::from_vec(g.dw_ih, (four_h, d.input), device)?,
            dw_hh: Tensor::from_vec(g.dw_hh, (four_h, d.h), device)?,
            dextra: Tensor::from_vec(g.dextra, four_h + 2 * d.b * d.h, device)?,
        })
    }

    /// The sizes, from the shapes the joined operand `[W_ih | W_hh]` would have.
    fn part_dims(&self, x: &Tensor, w_ih: &Tensor, w_hh: &Tensor, extra: &Tensor) -> Result<Dims> {
        let (four_h, input) = w_ih.dims2()?;
        let (rows, h) = w_hh.dims2()?;
        if rows != four_h {
            bail!("fused LSTM: W_ih has {four_h} rows, W_hh {rows}")
        }
        Dims::of(
            x.shape(),
            &Shape::from((four_h, input + h)),
            extra.shape(),
            self.input_kind,
        )
    }

    /// The CPU forward pass on borrowed values; the output `[B, T + 1, H]`.
    fn forward_values(
        &self,
        d: Dims,
        input_values: InputValues,
        weights: Weights,
        extra: &[f32],
    ) -> Result<Vec<f32>> {
        let Dims {
            b,
            t,
            x_steps,
            input,
            h,
            ..
        } = d;
        let (four_h, xw) = (4 * h, d.xh_width());
        let bias = &extra[..four_h];

        let keep = self.keep_for_backward;
        let x_width = d.x_width;
        let dense_x: &[f32] = match input_values {
            InputValues::Vectors(x) => x,
            InputValues::Ids(_) => &[],
        };
        // Written in full below: the h of block 0 here, the x of blocks 0..T by the copy that
        // follows, the h of blocks 1..=T by the team; the x of block T is zeroed.
        let mut xh = scratch::take((t + 1) * b * xw);
        for bi in 0..b {
            xh[(t * b + bi) * xw..][..x_width].fill(0.0);
            xh[bi * xw + x_width..(bi + 1) * xw].copy_from_slice(&extra[four_h + bi * h..][..h]);
        }
        if x_width > 0 {
            // x by time, beside the h of the step before: the rows of the input projection here
            // and of the single dW GEMM in the backward pass.
            xh.par_chunks_mut(b * xw)
                .take(t)
                .enumerate()
                .for_each(|(s, block)| {
                    for (bi, row) in block.chunks_exact_mut(xw).enumerate() {
                        row[..x_width]
                            .copy_from_slice(&dense_x[(bi * x_steps + s) * x_width..][..x_width]);
                    }
                });
        }

        // The input projection of every step. Vectors: time-major [T, B, 4H] so each step reads
        // one contiguous block, x W_ih^T[k, n] = w[n * ww + k], written in full by a GEMM that
        // does not read its destination. Ids: one row per id [V, 4H] (column `id` of w), which
        // the gate pass reads in place of a [T, B, 4H] copy.
        let (xproj, ids) = match self.input_kind {
            LayerInput::Dense | LayerInput::Stacked => {
                let mut xproj = scratch::take(t * b * four_h);
                matmul(
                    (t * b, four_h, input),
                    &mut xproj,
                    four_h,
                    &xh,
                    (xw, 1),
                    weights.ih,
                    (1, weights.ih_stride),
                );
                (xproj, &[][..])
            }
            LayerInput::Ids => {
                let InputValues::Ids(ids) = input_values else {
                    bail!("fused LSTM: ids expected")
                };
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= input) {
                    bail!("fused LSTM: id {bad} is outside the vocabulary of {input}")
                }
                // Written in full: every entry of every row.
                let mut table = scratch::take(input * four_h);
                table
                    .par_chunks_mut(four_h)
                    .enumerate()
                    .for_each(|(v, row)| {
                        for (n, value) in row.iter_mut().enumerate() {
                            *value = weights.ih[n * weights.ih_stride + v];
                        }
                    });
                (table, ids)
            }
        };

        // W_hh^T in panels: panel g * P + u holds gate g's columns for units 32u .. 32u + 31.
        let units = d.unit_panels();
        let panels = Panels::pack_rows(h, 4 * units, weights.hh, (weights.hh_stride, 0), |p, c| {
            let (g, j) = (p / units, (p % units) * PANEL + c);
            (j < h).then_some(g * h + j)
        });

        // Block 0 here, every unit of blocks 1..=T (cells) and 0..T (gates) by the team:
        // the members' shares cover all units.
        let mut cells = scratch::take((t + 1) * b * h);
        cells[..b * h].copy_from_slice(&extra[four_h + b * h..]);
        // Training on vectors: the activated gates overwrite the input projection, which has the
        // same layout, each lane read just before the gate pass writes it (`GateInput::InGates`).
        // Writing them elsewhere cost a second [T, B, 4H] buffer (16 MB at the bundled size,
        // 128 MB at the CLI's) and a read for ownership of every line of it.
        let in_place = keep && self.input_kind != LayerInput::Ids;
        let (mut gates, xproj) = if in_place {
            (xproj, Vec::new())
        } else {
            (scratch::take(if keep { t * b * four_h } else { 0 }), xproj)
        };

        // h_{t-1} again as the step kernel's row tiles, double-buffered by step parity: members
        // write their units of h_t into one half while others may still read h_{t-1} from the
        // other. Padding rows stay zero.
        let tiled = tiled_len(b, h);
        let mut h_tiles = vec![0f32; 2 * tiled];
        // Only the AVX-512 kernel reads the tiles; the others read `xh` itself.
        let tiles_read = self.kernel.reads_tiling(b);
        for bi in 0..b {
            for (j, &v) in extra[four_h + bi * h..][..h].iter().enumerate() {
                h_tiles[tiled_index(bi, j, h)] = v;
            }
        }
        // The op's output, batch-major [B, T + 1, H]: every member writes its units of each h_t
        // (while they are in L1) and of c_T; a pass after the team re-read all of xh from
        // memory.
        let mut out = vec![0f32; b * (t + 1) * h];
        let plan = TeamPlan::of(self.split, &d);
        let by_rows = plan.by_rows;
        {
            let out = SharedMut::new(&mut out);
            let h_tiles = SharedMut::new(&mut h_tiles);
            let xh = SharedMut::new(&mut xh);
            let cells = SharedMut::new(&mut cells);
            let gates = SharedMut::new(&mut gates);
            let (kernel, simd, xproj, panels) = (self.kernel, self.simd, &xproj, &panels);
            run_team(plan.threads, |member, barrier| {
                let (my, rows) = plan.member(&d, member);
                let (r0, mb) = (rows.start, rows.len());
                let (j0, n, width) = (my.units.start, my.units.len(), my.width());
                let stream = streams_from_l3(4 * my.panels.len(), h);
                let mut pre = vec![0f32; 4 * mb * width];
                let mut spare_gates = vec![0f32; if keep { 0 } else { 4 * width }];
                // tanh(c_t) is not kept: the backward pass recomputes it from c_t, bit for bit
                // (`Simd::tanh_into`), instead of reading a [T, B, H] copy.
                let mut spare_tanh = vec![0f32; width];
                for step in 0..t {
                    let (block, xh_block) = (step * b * h, step * b * xw);
                    let half = (step % 2) * tiled;
                    // SAFETY: the member's rows of block `step` of xh/cells and of its tiles were
                    // completed before the last barrier (by units) or by this member itself (by
                    // rows), or are the initial state; this step writes only block `step + 1`
                    // and the other half of the tiles. By rows, no one else touches these rows.
                    let (h_prev, c_prev, h_prev_tiles) = unsafe {
                        (
                            xh.slice(xh_block + r0 * xw + x_width..xh_block + rows.end * xw),
                            cells.slice(block + r0 * h..block + rows.end * h),
                            h_tiles.slice(half + tiled_len(r0, h)..half + tiled_len(rows.end, h)),
                        )
                    };
                    for g in 0..4 {
                        for (q, u) in my.panels.clone().enumerate() {
                            let out = &mut pre[g * mb * width + q * PANEL..];
                            let panel = panels.panel(g * units + u);
                            kernel.panel_product_tiled(
                                stream,
                                h_prev_tiles,
                                h_prev,
                                xw,
                                mb,
                                panel,
                                h,
                                out,
                                width,
                            );
                        }
                    }
                    for bi in rows.clone() {
                        let row = block + b * h + bi * h + j0;
                        let h_row = xh_block + b * xw + bi * xw + x_width + j0;
                        // Ids were checked against the vocabulary above.
                        let x_row = match ids.get(bi * t + step) {
                            Some(&id) => id as usize * four_h + j0,
                            None => (step * b + bi) * four_h + j0,
                        };
                        let gate_row = (step * b + bi) * four_h + j0;
                        let pre_at = |g: usize| &pre[g * mb * width + (bi - r0) * width..][..n];
                        // SAFETY: member-owned units j0..j0+n of row `bi` (a member-owned row, by
                        // rows) in block `step + 1` (xh, cells) or `step` (gates); no one else
                        // writes them.
                        let (h_out, c_out, kept_gates) = unsafe {
                            (
                                xh.slice_mut(h_row..h_row + n),
                                cells.slice_mut(row..row + n),
                                if keep {
                                    Some([0, 1, 2, 3].map(|g| {
                                        let at = gate_row + g * h;
                                        gates.slice_mut(at..at + n)
                                    }))
                                } else {
                                    None
                                },
                            )
                        };
                        let g_out = match kept_gates {
                            Some(g) => g,
                            None => {
                                let (a, rest) = spare_gates.split_at_mut(width);
                                let (b2, rest) = rest.split_at_mut(width);
                                let (c2, d2) = rest.split_at_mut(width);
                                [a, b2, c2, d2]
                            }
                        };
                        let t_out = &mut spare_tanh[..];
                        let input = if in_place {
                            GateInput::InGates
                        } else {
                            GateInput::Given([0, 1, 2, 3].map(|g| &xproj[x_row + g * h..][..n]))
                        };
                        simd.forward(ForwardRow {
                            recurrent: [pre_at(0), pre_at(1), pre_at(2), pre_at(3)],
                            input,
                            bias: [0, 1, 2, 3].map(|g| &bias[g * h + j0..][..n]),
                            c_prev: &c_prev[(bi - r0) * h + j0..][..n],
                            c: c_out,
                            h: h_out,
                            gates: g_out,
                            tanh_c: t_out,
                        });
                    }
                    for first in rows.clone().step_by(TILE_ROWS) {
                        let count = (rows.end - first).min(TILE_ROWS);
                        let h_row = |bi: usize| xh_block + b * xw + bi * xw + x_width + j0;
                        // SAFETY: the member's own units of rows `first..first + count` (its own
                        // rows, by rows) of h_{step+1}, written above, and their part of the half
                        // of the tiles no one reads during this step and of the output's rows.
                        unsafe {
                            let mut rows: [&[f32]; TILE_ROWS] = [&[]; TILE_ROWS];
                            for (i, row) in rows.iter_mut().take(count).enumerate() {
                                *row = xh.slice(h_row(first + i)..h_row(first + i) + n);
                                let at = ((first + i) * (t + 1) + step) * h + j0;
                                out.slice_mut(at..at + n).copy_from_slice(row);
                            }
                            if tiles_read {
                                let span = tiled_span(first, my.units.clone(), h);
                                let half = ((step + 1) % 2) * tiled;
                                store_tile(
                                    kernel,
                                    h_tiles.slice_mut(half + span.start..half + span.end),
                                    &rows[..count],
                                );
                            }
                        }
                    }
                    // A member that owns whole rows reads only its own rows' h_t: nothing to wait for.
                    if !by_rows {
                        barrier.wait();
                    }
                }
                for bi in rows.clone() {
                    let (from, to) = ((t * b + bi) * h + j0, (bi * (t + 1) + t) * h + j0);
                    // SAFETY: the member's own units of c_T (written by it, or the initial state
                    // when t = 0) and of the output's last row.
                    unsafe {
                        out.slice_mut(to..to + n)
                            .copy_from_slice(cells.slice(from..from + n))
                    };
                }
            });
        }

        scratch::give(xproj);
        if keep {
            *self.saved.lock().map_err(|_| poisoned("fused LSTM"))? =
                Some(Saved { gates, cells, xh });
        } else {
            [gates, cells, xh].into_iter().for_each(scratch::give);
        }
        Ok(out)
    }
}

impl CustomOp3 for FusedLstmOp {
    fn name(&self) -> &'static str {
        "fused-lstm"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if self.input_kind != LayerInput::Dense {
            bail!("fused LSTM: on CUDA the op takes vectors [B, T, In], not ids or a stacked input")
        }
        let d = Dims::of(l1.shape(), l2.shape(), l3.shape(), self.input_kind)?;
        let (out, saved) = super::cuda_lstm::forward((s1, l1), (s2, l2), (s3, l3), d.cuda_sizes())?;
        if self.keep_for_backward {
            *self.saved_cuda.lock().map_err(|_| poisoned("fused LSTM"))? = Some(saved);
        }
        Ok((out, Shape::from((d.b, d.t + 1, d.h))))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1.shape(), l2.shape(), l3.shape(), self.input_kind)?;
        let w = storage_values::<f32>(s2, l2, "fused LSTM: w")?;
        let extra = storage_values::<f32>(s3, l3, "fused LSTM: extra")?;
        let input = match self.input_kind {
            LayerInput::Dense | LayerInput::Stacked => {
                InputValues::Vectors(storage_values::<f32>(s1, l1, "fused LSTM: x")?)
            }
            LayerInput::Ids => InputValues::Ids(storage_values::<u32>(s1, l1, "fused LSTM: ids")?),
        };
        let out = self.forward_values(d, input, Weights::joined(w, &d), extra)?;
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.t + 1, d.h))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        extra: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::of(x.shape(), w.shape(), extra.shape(), self.input_kind)?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let saved = take_saved(&self.saved_cuda, "fused LSTM")?;
            let g =
                super::cuda_lstm::backward([x, w, extra, _res, grad_res], saved, d.cuda_sizes())?;
            return Ok((Some(g.dx), Some(g.dw), Some(g.dextra)));
        }
        let saved = take_saved(&self.saved, "fused LSTM")?;
        let device = x.device();
        // Read in place: the gradient and the weights are megabytes, copied every step otherwise.
        let g = with_values(grad_res, |grad: &[f32]| {
            with_values(w, |w: &[f32]| {
                self.backward_of(d, saved, grad, Weights::joined(w, &d), x)
            })
        })?;
        // Autograd takes the gradient of `w` whole: the two parts side by side again.
        let (four_h, input, h, ww) = (4 * d.h, d.input, d.h, d.w_width());
        let mut dw = vec![0f32; four_h * ww];
        dw.par_chunks_mut(ww).enumerate().for_each(|(n, row)| {
            row[..input].copy_from_slice(&g.dw_ih[n * input..][..input]);
            row[input..].copy_from_slice(&g.dw_hh[n * h..][..h]);
        });
        let dextra_len = g.dextra.len();
        Ok((
            g.dx,
            Some(Tensor::from_vec(dw, (four_h, ww), device)?),
            Some(Tensor::from_vec(g.dextra, dextra_len, device)?),
        ))
    }
}

impl FusedLstmOp {
    /// [`FusedLstmOp::backward`] for the op's input `x`: its ids read in place (ids mode).
    fn backward_of(
        &self,
        d: Dims,
        saved: Saved,
        grad: &[f32],
        weights: Weights,
        x: &Tensor,
    ) -> Result<WeightGradients> {
        match self.input_kind {
            LayerInput::Dense | LayerInput::Stacked => {
                self.backward(d, saved, grad, weights, &[], x.device())
            }
            LayerInput::Ids => with_values(x, |ids: &[u32]| {
                self.backward(d, saved, grad, weights, ids, x.device())
            }),
        }
    }

    /// The backward pass on borrowed values: `grad [B, T + 1, H]`, the weights, and the ids
    /// (ids mode).
    fn backward(
        &self,
        d: Dims,
        saved: Saved,
        grad: &[f32],
        weights: Weights,
        ids: &[u32],
        device: &candle_core::Device,
    ) -> Result<WeightGradients> {
        let Saved { gates, cells, xh } = saved;
        let Dims {
            b,
            t,
            x_steps,
            input,
            h,
            ..
        } = d;
        let (four_h, xw) = (4 * h, d.xh_width());

        // W_hh in panels: panel u holds columns (units) 32u .. 32u + 31 of the [4H, H] matrix.
        let units = d.unit_panels();
        let panels = Panels::pack(four_h, units, |u, kk, c| {
            let j = u * PANEL + c;
            if j < h {
                weights.hh[kk * weights.hh_stride + j]
            } else {
                0.0
            }
        });

        // Gate pre-activation gradients, time-major [T, B, 4H], every unit of every step's block
        // by the team. They overwrite the saved gates, which have the same layout, each lane read
        // just before the gate pass writes it (`BackwardRow::gates`): a separate buffer was one
        // more [T, B, 4H] at the peak of a step (134 MB at the CLI's default size) and a read for
        // ownership of every line of it.
        let mut da = gates;
        let mut dstate = vec![0f32; 2 * b * h];
        // By units, the bias gradient (the column sums of da) is gathered by each member for its
        // units while its rows are in cache, and so are the ids' sums (the input part of dW, rows
        // per id [V, 4H]). By rows, a member sees only some rows of each column, and sums of
        // partial sums would make the bits depend on the team's size: one pass after the team
        // adds them up in the same order as the split by units does (~2 ms a layer to re-read da).
        let mut dbias = vec![0f32; four_h];
        let mut per_id = vec![0f32; if ids.is_empty() { 0 } else { input * four_h }];
        // Each step's da block again as the step kernel's row tiles, double-buffered as in the
        // forward pass.
        let tiled = tiled_len(b, four_h);
        let mut da_tiles = vec![0f32; 2 * tiled];
        let tiles_read = self.kernel.reads_tiling(b);
        let plan = TeamPlan::of(self.split, &d);
        let by_rows = plan.by_rows;
        {
            let da_tiles = SharedMut::new(&mut da_tiles);
            let da = SharedMut::new(&mut da);
            let dstate = SharedMut::new(&mut dstate);
            let dbias = SharedMut::new(&mut dbias);
            let per_id = SharedMut::new(&mut per_id);
            let (kernel, simd, panels) = (self.kernel, self.simd, &panels);
            let cells = &cells;
            run_team(plan.threads, |member, barrier| {
                let (my, rows) = plan.member(&d, member);
                let (r0, mb) = (rows.start, rows.len());
                let (j0, n, width) = (my.units.start, my.units.len(), my.width());
                let stream = streams_from_l3(my.panels.len(), four_h);
                // This member's part of dh_{t} (from step t + 1) and dc, [rows, width].
                let mut dh_next = vec![0f32; mb * width];
                let mut dc = vec![0f32; mb * width];
                // Per gate, this member's units of the bias gradient (by units).
                let mut my_dbias = vec![0f32; if by_rows { 0 } else { 4 * width }];
                // tanh(c_t) of the row at hand.
                let mut tanh_c = vec![0f32; width];
                for bi in rows.clone() {
                    let row = (bi * (t + 1) + t) * h + j0;
                    dc[(bi - r0) * width..][..n].copy_from_slice(&grad[row..row + n]);
                }
                for step in (0..t).rev() {
                    for bi in rows.clone() {
                        let gate_row = (step * b + bi) * four_h + j0;
                        let row = (step * b + bi) * h + j0;
                        let local = (bi - r0) * width;
                        // SAFETY: member-owned units of a member-owned row of block `step` (its
                        // saved gates, then their derivatives); by units, the others read this
                        // block only after the barrier below; by rows, no one else does.
                        let da_row = unsafe {
                            [0, 1, 2, 3]
                                .map(|g| da.slice_mut(gate_row + g * h..gate_row + g * h + n))
                        };
                        simd.tanh_into(&cells[row + b * h..][..n], &mut tanh_c[..n]);
                        simd.backward(BackwardRow {
                            gates: da_row,
                            tanh_c: &tanh_c[..n],
                            c_prev: &cells[row..row + n],
                            dh_out: &grad[(bi * (t + 1) + step) * h + j0..][..n],
                            dh_next: &dh_next[local..][..n],
                            dc: &mut dc[local..][..n],
                        });
                        if by_rows {
                            continue;
                        }
                        // SAFETY: the member's own units of row `bi` of block `step`, written
                        // just above.
                        unsafe {
                            for g in 0..4 {
                                let at = gate_row + g * h;
                                let da_g = da.slice(at..at + n);
                                kernel.add_to(da_g, &mut my_dbias[g * width..][..n]);
                                if let Some(&id) = ids.get(bi * t + step) {
                                    // SAFETY: the member's own units of row `id`.
                                    let row = per_id.slice_mut(
                                        id as usize * four_h + g * h + j0
                                            ..id as usize * four_h + g * h + j0 + n,
                                    );
                                    kernel.add_to(da_g, row);
                                }
                            }
                        }
                    }
                    // Only the AVX-512 kernel reads the tiles; the others read `da` itself.
                    for first in rows.clone().step_by(TILE_ROWS).filter(|_| tiles_read) {
                        let count = (rows.end - first).min(TILE_ROWS);
                        for g in 0..4 {
                            let at = |bi: usize| (step * b + bi) * four_h + g * h + j0;
                            // SAFETY: the member's own units of gate g in its rows
                            // `first..first + count` of block `step`, written above, and their
                            // part of the half of the tiles no one else reads until the barrier
                            // below (by units) or ever (by rows).
                            unsafe {
                                let mut rows: [&[f32]; TILE_ROWS] = [&[]; TILE_ROWS];
                                for (i, row) in rows.iter_mut().take(count).enumerate() {
                                    *row = da.slice(at(first + i)..at(first + i) + n);
                                }
                                let span = tiled_span(first, g * h + j0..g * h + j0 + n, four_h);
                                let half = (step % 2) * tiled;
                                store_tile(
                                    kernel,
                                    da_tiles.slice_mut(half + span.start..half + span.end),
                                    &rows[..count],
                                );
                            }
                        }
                    }
                    // A member that owns whole rows reads only its own rows' da: nothing to wait
                    // for.
                    if !by_rows {
                        barrier.wait();
                    }
                    let (block, half) = (step * b * four_h, (step % 2) * tiled);
                    // SAFETY: the member's rows of block `step` and of its tiles are complete
                    // (barrier above, or written by the member itself); the next writes go to
                    // block `step - 1` and the other half of the tiles.
                    let (da_t, da_t_tiles) = unsafe {
                        (
                            da.slice(block + r0 * four_h..block + rows.end * four_h),
                            da_tiles.slice(
                                half + tiled_len(r0, four_h)..half + tiled_len(rows.end, four_h),
                            ),
                        )
                    };
                    for (q, u) in my.panels.clone().enumerate() {
                        let out = &mut dh_next[q * PANEL..];
                        kernel.panel_product_tiled(
                            stream,
                            da_t_tiles,
                            da_t,
                            four_h,
                            mb,
                            panels.panel(u),
                            four_h,
                            out,
                            width,
                        );
                    }
                }
                for bi in rows.clone() {
                    // SAFETY: member-owned units of each member-owned row of dh_0 and dc_0.
                    let (dh0, dc0) = unsafe {
                        (
                            dstate.slice_mut(bi * h + j0..bi * h + j0 + n),
                            dstate.slice_mut((b + bi) * h + j0..(b + bi) * h + j0 + n),
                        )
                    };
                    let local = (bi - r0) * width;
                    dh0.copy_from_slice(&dh_next[local..][..n]);
                    dc0.copy_from_slice(&dc[local..][..n]);
                }
                for g in (0..4).filter(|_| !by_rows) {
                    // SAFETY: member-owned units of gate g's bias gradient.
                    let sums = unsafe { dbias.slice_mut(g * h + j0..g * h + j0 + n) };
                    sums.copy_from_slice(&my_dbias[g * width..][..n]);
                }
            });
        }
        if by_rows {
            column_sums(self.kernel, &da, (t, b), ids, &mut dbias, &mut per_id);
        }

        let rows = t * b;
        // dW_hh = da^T [4H, TB] times the rows h_{t-1} of xh, and for vectors dW_ih = da^T times
        // the rows x_t (ids: from the sums per id below). Two products, each into its own
        // buffer: `gemm` blocks the depth by cache size alone, not by the columns, so each sum
        // is the same chain of multiply-adds as in one product over `[x_t | h_{t-1}]`.
        let lhs_rs = (1, four_h);
        let mut dw_hh = vec![0f32; four_h * h];
        matmul(
            (four_h, h, rows),
            &mut dw_hh,
            h,
            &da,
            lhs_rs,
            &xh[d.x_width..],
            (xw, 1),
        );
        let mut dw_ih = vec![0f32; four_h * input];
        let dx = match self.input_kind {
            LayerInput::Dense | LayerInput::Stacked => {
                matmul(
                    (four_h, input, rows),
                    &mut dw_ih,
                    input,
                    &da,
                    lhs_rs,
                    &xh,
                    (xw, 1),
                );
                // dx = da W_ih, time-major, then back to x's shape (a zero row for the cell
                // state of a stacked input).
                // Written in full by a GEMM that does not read its destination.
                let mut dx_by_time = scratch::take(rows * input);
                let dx_rs = (four_h, 1);
                matmul(
                    (rows, input, four_h),
                    &mut dx_by_time,
                    input,
                    &da,
                    dx_rs,
                    weights.ih,
                    (weights.ih_stride, 1),
                );
                let dx = swap_leading(&dx_by_time, (t, x_steps), b, input);
                scratch::give(dx_by_time);
                Some(Tensor::from_vec(dx, (b, x_steps, input), device)?)
            }
            LayerInput::Ids => {
                dw_ih
                    .par_chunks_mut(input.max(1))
                    .enumerate()
                    .for_each(|(n, row)| {
                        for (v, value) in row.iter_mut().enumerate() {
                            *value = per_id[v * four_h + n];
                        }
                    });
                None
            }
        };
        let mut dextra = dbias;
        dextra.extend_from_slice(&dstate);
        [da, cells, xh].into_iter().for_each(scratch::give);
        Ok(WeightGradients {
            dx,
            dw_ih,
            dw_hh,
            dextra,
        })
    }
}

/// The column sums of `da [T, B, 4H]` into `dbias [4H]`, and for ids each row's also into
/// `per_id [V, 4H]` at its id: per column, the steps from last to first and in each the rows in
/// batch order, the order in which the team split by units adds them in its step loop.
fn column_sums(
    kernel: Kernel,
    da: &[f32],
    (t, b): (usize, usize),
    ids: &[u32],
    dbias: &mut [f32],
    per_id: &mut [f32],
) {
    let four_h = dbias.len();
    let vocab = per_id.len() / four_h;
    let parts = column_parts(four_h);
    let sums: Vec<(Vec<f32>, Vec<f32>)> = parts
        .par_iter()
        .map(|part| {
            let cols = part.len();
            let mut bias = vec![0f32; cols];
            let mut by_id = vec![0f32; vocab * cols];
            for step in (0..t).rev() {
                for bi in 0..b {
                    let row = &da[(step * b + bi) * four_h + part.start..][..cols];
                    kernel.add_to(row, &mut bias);
                    // Ids were checked against the vocabulary in the forward pass.
                    if let Some(&id) = ids.get(bi * t + step) {
                        kernel.add_to(row, &mut by_id[id as usize * cols..][..cols]);
                    }
                }
            }
            (bias, by_id)
        })
        .collect();
    for ((bias, by_id), part) in sums.iter().zip(&parts) {
        dbias[part.clone()].copy_from_slice(bias);
        for (v, sums) in by_id.chunks_exact(part.len()).enumerate() {
            per_id[v * four_h + part.start..][..part.len()].copy_from_slice(sums);
        }
    }
}

/// Whether a member's `panels` panels of depth `k` outgrow a core's L2 (1-2 MB on current x86
/// server cores; the panels share it with the step's other data), so that each step streams them
/// from L3 and the step kernel should prefetch.
fn streams_from_l3(panels: usize, k: usize) -> bool {
    panels * k * PANEL * std::mem::size_of::<f32>() > 512 * 1024
}
