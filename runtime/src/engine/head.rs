//! The output matrix (final hidden state → vocabulary logits) of a Q8_0 model, multiplied by
//! our own kernel in every session where it applies.
//!
//! Why: at a SAG position the context evaluates one row per distinct candidate (about five).
//! llama.cpp multiplies those rows by a Q8_0 output matrix with a generic 4-row tile kernel
//! (no repacked layout exists for Q8_0 on x86), and for the default model, whose 49,152 × 576
//! output matrix is a fifth of its weights, that product took 23% of a SAG step's time
//! (perf, 10 MATH questions) — as much as all 30 layers' Q4_0 matrices together.
//!
//! How: the session asks llama.cpp, through the graph evaluation callback, for the
//! `result_norm` tensor (the normalised final hidden state of the rows that want logits) and
//! stops the graph there, so llama.cpp's own output product is never computed. [`OutputHead`]
//! then does the product: the matrix is repacked once into groups of 16 rows interleaved
//! 4 bytes at a time, so one AVX-512 VNNI instruction multiplies 4 inputs into 16 rows, and
//! the inputs are quantised to Q8_0 exactly as ggml does before its own product. Per 32-wide
//! block the integer dot product is exact; it is then scaled by both blocks' f16 scales, as
//! ggml does, so the logits equal llama.cpp's up to the order of float additions (checked by
//! the tests against a scalar reference and against llama.cpp's logits).
//!
//! Where the CPU lacks AVX-512 VNNI, or the output matrix is not Q8_0, nothing changes:
//! llama.cpp computes the logits as before.

/// Weight rows per interleaved group: one 512-bit register of 32-bit lanes.
pub const GROUP_ROWS: usize = 16;
/// Weights per Q8_0 block.
const QK8_0: usize = 32;
/// Bytes of a Q8_0 block: f16 scale, 32 signed codes.
const Q8_0_BYTES: usize = 34;
/// Input rows multiplied per pass over a group (their accumulators stay in registers).
const ROWS_PER_PASS: usize = 8;

/// A Q8_0 output matrix in the interleaved layout of the kernel.
pub struct OutputHead {
    n_embd: usize,
    n_vocab: usize,
    /// `[group][block][k4 (8)][row (16)][4 codes]`: for each 4-wide slice of a block, the
    /// 16 rows' codes side by side, as one VNNI operand.
    codes: Vec<i8>,
    /// `[group][block][row]`: the blocks' scales.
    scales: Vec<f32>,
    /// `[group][block][row]`: 128 × the sum of the block's codes. The kernel multiplies
    /// unsigned inputs (code + 128); this is what that shift adds, taken off again.
    shift: Vec<i32>,
}

impl std::fmt::Debug for OutputHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputHead")
            .field("n_embd", &self.n_embd)
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

/// Inputs quantised to Q8_0 the way ggml's x86 code does, held as unsigned codes (+128).
struct QuantisedRows {
    /// `[row][n_embd]` codes + 128.
    codes: Vec<u8>,
    /// `[row][block]` the blocks' scales (f16-rounded, as ggml stores them).
    scales: Vec<f32>,
}

impl OutputHead {
    /// Whether this CPU has the instructions the kernel needs.
    pub fn supported_here() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Repacks a Q8_0 matrix of `n_vocab` rows × `n_embd` columns (ggml's row-major block
    /// layout). `None` when the shape does not fit the layout, or where this CPU lacks the
    /// kernel's instructions (so a head that exists can always run).
    pub fn from_q8_0(data: &[u8], n_embd: usize, n_vocab: usize) -> Option<Self> {
        if data.len() != n_vocab * (n_embd / QK8_0) * Q8_0_BYTES || !n_embd.is_multiple_of(QK8_0) {
            return None;
        }
        Self::read_q8_0(data, n_embd, n_vocab)
    }

    /// [`OutputHead::from_q8_0`] over a reader of the matrix's bytes, read 16 rows at a time,
    /// so building the head never holds a second whole copy of the matrix (30 MB for the
    /// default model, which was the peak of a run's memory). `None` also when `src` ends
    /// early or fails.
    pub fn read_q8_0(mut src: impl std::io::Read, n_embd: usize, n_vocab: usize) -> Option<Self> {
        if !Self::supported_here()
            || n_embd == 0
            || !n_embd.is_multiple_of(QK8_0)
            || n_vocab == 0
            || !n_vocab.is_multiple_of(GROUP_ROWS)
        {
            return None;
        }
        let nb = n_embd / QK8_0;
        let groups = n_vocab / GROUP_ROWS;
        let mut codes = vec![0i8; n_vocab * n_embd];
        let mut scales = vec![0f32; n_vocab * nb];
        let mut shift = vec![0i32; n_vocab * nb];
        let mut rows = vec![0u8; GROUP_ROWS * nb * Q8_0_BYTES];
        for g in 0..groups {
            src.read_exact(&mut rows).ok()?;
            for b in 0..nb {
                let gb = g * nb + b;
                for r in 0..GROUP_ROWS {
                    let blk = &rows[(r * nb + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                    scales[gb * GROUP_ROWS + r] = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                    let q = &blk[2..];
                    let mut sum = 0i32;
                    for (k, &c) in q.iter().enumerate() {
                        let c = c as i8;
                        sum += c as i32;
                        let (k4, j) = (k / 4, k % 4);
                        codes[((gb * 8 + k4) * GROUP_ROWS + r) * 4 + j] = c;
                    }
                    shift[gb * GROUP_ROWS + r] = 128 * sum;
                }
            }
        }
        Some(Self {
            n_embd,
            n_vocab,
            codes,
            scales,
            shift,
        })
    }

    /// Width of an input row.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    /// Logits per row.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// `out[r·n_vocab + v]` = logit `v` of input row `r` (`hidden` holds rows of `n_embd`),
    /// on up to `threads` threads.
    pub fn logits(&self, hidden: &[f32], out: &mut Vec<f32>, threads: usize) {
        let rows = hidden.len() / self.n_embd;
        out.clear();
        if rows == 0 {
            return;
        }
        // Every element is written below (all groups of all rows): no zero fill first.
        out.reserve(rows * self.n_vocab);
        let x = self.quantise(hidden, rows);
        let groups = self.n_vocab / GROUP_ROWS;
        let threads = threads.clamp(1, groups);
        let per = groups.div_ceil(threads);
        // Each thread writes its own columns of every row: hand out raw column ranges.
        let out_ptr = SendPtr(out.as_mut_ptr());
        let x = &x;
        std::thread::scope(|s| {
            for t in 1..threads {
                let (g0, g1) = (t * per, ((t + 1) * per).min(groups));
                s.spawn(move || {
                    let p = out_ptr;
                    // SAFETY: threads write disjoint column ranges `g0..g1` of `out`.
                    unsafe { self.groups(x, rows, g0, g1, p.0) }
                });
            }
            // SAFETY: as above, range `0..per`.
            unsafe { self.groups(x, rows, 0, per.min(groups), out_ptr.0) }
        });
        // SAFETY: the threads above wrote all `rows · n_vocab` floats (capacity reserved).
        unsafe { out.set_len(rows * self.n_vocab) };
    }

    fn quantise(&self, hidden: &[f32], rows: usize) -> QuantisedRows {
        let nb = self.n_embd / QK8_0;
        let mut codes = vec![0u8; rows * self.n_embd];
        let mut scales = vec![0f32; rows * nb];
        for (i, block) in hidden[..rows * self.n_embd].chunks_exact(QK8_0).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            // ggml: d = amax/127 stored as f16; codes = round-half-even(x · 127/amax).
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            scales[i] = f16_to_f32(f32_to_f16(d));
            for (c, &v) in codes[i * QK8_0..][..QK8_0].iter_mut().zip(block) {
                *c = ((v * id).round_ties_even() as i32 + 128) as u8;
            }
        }
        QuantisedRows { codes, scales }
    }

    /// Groups `g0..g1` for every row; writes `out[r·n_vocab + g·16 ..][..16]`.
    ///
    /// # Safety
    /// `out` points to room for `rows · n_vocab` floats; no other thread writes these columns.
    unsafe fn groups(&self, x: &QuantisedRows, rows: usize, g0: usize, g1: usize, out: *mut f32) {
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(ROWS_PER_PASS);
            for g in g0..g1 {
                // SAFETY: the caller's contract, and `from_q8_0` built this head only where
                // `supported_here`.
                unsafe {
                    match n {
                        1 => self.group::<1>(x, r0, g, out),
                        2 => self.group::<2>(x, r0, g, out),
                        3 => self.group::<3>(x, r0, g, out),
                        4 => self.group::<4>(x, r0, g, out),
                        5 => self.group::<5>(x, r0, g, out),
                        6 => self.group::<6>(x, r0, g, out),
                        7 => self.group::<7>(x, r0, g, out),
                        _ => self.group::<8>(x, r0, g, out),
                    }
                }
            }
            r0 += n;
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn group<const R: usize>(&self, x: &QuantisedRows, r0: usize, g: usize, out: *mut f32) {
        use std::arch::x86_64::*;
        let nb = self.n_embd / QK8_0;
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let gb = g * nb + b;
            // SAFETY: all offsets are inside the vectors built by `from_q8_0` / `quantise`.
            unsafe {
                let wp = self.codes.as_ptr().add(gb * 8 * GROUP_ROWS * 4);
                let w: [__m512i; 8] =
                    std::array::from_fn(|k| _mm512_loadu_si512(wp.add(k * 64) as *const _));
                let dw = _mm512_loadu_ps(self.scales.as_ptr().add(gb * GROUP_ROWS));
                let shift =
                    _mm512_loadu_si512(self.shift.as_ptr().add(gb * GROUP_ROWS) as *const _);
                for (r, a) in acc.iter_mut().enumerate() {
                    let row = r0 + r;
                    let xp = x.codes.as_ptr().add(row * self.n_embd + b * QK8_0) as *const i32;
                    let mut s = _mm512_setzero_si512();
                    for (k, wk) in w.iter().enumerate() {
                        s = _mm512_dpbusd_epi32(
                            s,
                            _mm512_set1_epi32(xp.add(k).read_unaligned()),
                            *wk,
                        );
                    }
                    let s = _mm512_sub_epi32(s, shift);
                    let d =
                        _mm512_mul_ps(dw, _mm512_set1_ps(*x.scales.get_unchecked(row * nb + b)));
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: row `r0 + r`, columns `g·16..g·16+16` are inside `out` (caller).
            unsafe { _mm512_storeu_ps(out.add((r0 + r) * self.n_vocab + g * GROUP_ROWS), *a) };
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn group<const R: usize>(&self, _: &QuantisedRows, _: usize, _: usize, _: *mut f32) {
        unreachable!("OutputHead is only built where supported_here()")
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one buffer to scoped threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// IEEE half → single, as ggml converts.
fn f16_to_f32(h: u16) -> f32 {
    // SAFETY: a pure conversion function of ggml.
    unsafe { llama_cpp_sys_2::ggml_fp16_to_fp32(h) }
}

/// Single → half (nearest, ties to even), as ggml converts.
fn f32_to_f16(x: f32) -> u16 {
    // SAFETY: a pure conversion function of ggml.
    unsafe { llama_cpp_sys_2::ggml_fp32_to_fp16(x) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 * 2.0 - 1.0
        }
    }

    fn random_q8_0(rows: usize, n_embd: usize, rng: &mut Lcg) -> Vec<u8> {
        let mut data = Vec::new();
        for _ in 0..rows * n_embd / QK8_0 {
            let d = f32_to_f16(0.001 + (rng.f().abs() * 0.05));
            data.extend_from_slice(&d.to_le_bytes());
            for _ in 0..QK8_0 {
                // The full code range ggml produces, ±127, with the extremes well represented.
                let c = (rng.next() % 255) as i32 - 127;
                data.push(c as i8 as u8);
            }
        }
        data
    }

    /// ggml's definition: per block, int dot of the codes × both scales, summed in f64 here.
    fn reference(head_data: &[u8], n_embd: usize, n_vocab: usize, hidden: &[f32]) -> Vec<f64> {
        let nb = n_embd / QK8_0;
        let rows = hidden.len() / n_embd;
        let mut out = vec![0f64; rows * n_vocab];
        for r in 0..rows {
            for v in 0..n_vocab {
                let mut sum = 0f64;
                for b in 0..nb {
                    let x = &hidden[r * n_embd + b * QK8_0..][..QK8_0];
                    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
                    let dx = f16_to_f32(f32_to_f16(amax / 127.0));
                    let blk = &head_data[(v * nb + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                    let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                    let dot: i64 = x
                        .iter()
                        .zip(&blk[2..])
                        .map(|(&xv, &c)| (xv * id).round_ties_even() as i64 * (c as i8) as i64)
                        .sum();
                    sum += dot as f64 * (dw * dx) as f64;
                }
                out[r * n_vocab + v] = sum;
            }
        }
        out
    }

    #[test]
    fn kernel_matches_the_per_block_definition() {
        if !OutputHead::supported_here() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        let (n_embd, n_vocab) = (96, 64);
        let mut rng = Lcg(7);
        let data = random_q8_0(n_vocab, n_embd, &mut rng);
        let head = OutputHead::from_q8_0(&data, n_embd, n_vocab).expect("fits the layout");
        // 1 to 11 rows: every tail length of the 8-row passes, one and two threads.
        for rows in [1usize, 2, 3, 5, 8, 9, 11] {
            let mut hidden: Vec<f32> = (0..rows * n_embd).map(|_| rng.f() * 3.0).collect();
            // An all-zero block (scale 0) and a block of exact ties.
            hidden[..QK8_0].iter_mut().for_each(|v| *v = 0.0);
            if rows > 1 {
                for (i, v) in hidden[n_embd..n_embd + QK8_0].iter_mut().enumerate() {
                    *v = if i == 0 { 127.0 } else { (i as f32) + 0.5 };
                }
            }
            let want = reference(&data, n_embd, n_vocab, &hidden);
            for threads in [1, 2, 3] {
                let mut got = Vec::new();
                head.logits(&hidden, &mut got, threads);
                assert_eq!(got.len(), want.len());
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * w.abs().max(1.0);
                    assert!(
                        (g as f64 - w).abs() <= tol,
                        "rows {rows} threads {threads} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_outside_the_layout_are_refused() {
        if !OutputHead::supported_here() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU (no head is ever built)");
            return;
        }
        let mut rng = Lcg(1);
        let data = random_q8_0(16, 64, &mut rng);
        assert!(OutputHead::from_q8_0(&data, 64, 16).is_some());
        assert!(
            OutputHead::from_q8_0(&data, 64, 15).is_none(),
            "rows not a multiple of 16"
        );
        assert!(
            OutputHead::from_q8_0(&data, 48, 16).is_none(),
            "width not a multiple of 32"
        );
        assert!(
            OutputHead::from_q8_0(&data[1..], 64, 16).is_none(),
            "wrong byte count"
        );
        assert!(
            OutputHead::read_q8_0(&data[1..], 64, 16).is_none(),
            "reader ends early"
        );
    }
}
