//! ggml Whisper weights quantised to `q8_0` or `q5_1`, formats whisper.cpp's own
//! `quantize` tool writes: every 2-D f16 weight matrix becomes blocks of 32 values — q8_0:
//! 32 int8 with one f16 scale (34 bytes per 32 weights instead of 64); q5_1: 32 5-bit
//! values with an f16 scale and an f16 minimum (24 bytes) — everything else is copied as it is
//! (f32 layer norms, biases and positional embeddings; the f16 3-D convolutions, which
//! whisper.cpp keeps in f16). Pure and deterministic: the same f16 file always gives the
//! same bytes (round half away from zero, as ggml's reference quantiser).
//!
//! Runs in the installer (`panda models install`), on the caller's thread.

use half::f16;

use super::ct2::{Ct2Error, Reader};

/// ggml's type ids in a tensor header.
const GGML_TYPE_F32: i32 = 0;
const GGML_TYPE_F16: i32 = 1;
const GGML_TYPE_Q5_1: i32 = 7;
const GGML_TYPE_Q8_0: i32 = 8;
/// `GGML_FTYPE_MOSTLY_Q8_0`, with the quantisation format version whisper.cpp checks
/// (`GGML_QNT_VERSION` 2 × `GGML_QNT_VERSION_FACTOR` 1000).
const FTYPE_Q8_0: i32 = 2 * 1000 + 7;
/// `GGML_FTYPE_MOSTLY_Q5_1`, likewise.
const FTYPE_Q5_1: i32 = 2 * 1000 + 9;
/// Weights per block (both formats).
const QK8_0: usize = 32;

/// A quantised weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// 8-bit values, one f16 scale per 32 (whisper.cpp's most accurate quantisation).
    Q8_0,
    /// 5-bit values, an f16 scale and minimum per 32.
    Q5_1,
}

impl Quant {
    fn ids(self) -> (i32, i32) {
        match self {
            Quant::Q8_0 => (GGML_TYPE_Q8_0, FTYPE_Q8_0),
            Quant::Q5_1 => (GGML_TYPE_Q5_1, FTYPE_Q5_1),
        }
    }
}

/// A ggml Whisper file (as the converter writes it, f16) → the same model in q8_0.
pub fn whisper_q8_0(ggml: &[u8]) -> Result<Vec<u8>, Ct2Error> {
    whisper_quantised(ggml, Quant::Q8_0)
}

/// A ggml Whisper file (f16) → the same model with its weight matrices in `quant`.
pub fn whisper_quantised(ggml: &[u8], quant: Quant) -> Result<Vec<u8>, Ct2Error> {
    let (ttype_q, ftype) = quant.ids();
    let mut r = Reader::new(ggml);
    let mut out = Vec::with_capacity(ggml.len() * 6 / 10);
    // Magic and the 11 hparams; the last (ftype) changes.
    let head = r.take(4 + 4 * 11)?;
    out.extend_from_slice(&head[..4 + 4 * 10]);
    out.extend_from_slice(&ftype.to_le_bytes());
    // Mel filter bank: rows, columns, f32 values.
    let (rows, cols) = (r.i32()?, r.i32()?);
    let mel = r.take(4 * count(rows)? * count(cols)?)?;
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&cols.to_le_bytes());
    out.extend_from_slice(mel);
    // Vocabulary: count, then length-prefixed byte strings.
    let n = r.i32()?;
    out.extend_from_slice(&n.to_le_bytes());
    for _ in 0..count(n)? {
        let len = r.i32()?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r.take(count(len)?)?);
    }
    // Tensors to the end.
    while r.remaining() > 0 {
        let (n_dims, name_len, ttype) = (r.i32()?, r.i32()?, r.i32()?);
        if !(1..=4).contains(&n_dims) {
            return Err(Ct2Error::Malformed(format!(
                "tensor with {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::new();
        for _ in 0..n_dims {
            dims.push(count(r.i32()?)?);
        }
        let name = r.take(count(name_len)?)?;
        let elems: usize = dims.iter().product();
        let data = match ttype {
            GGML_TYPE_F32 => r.take(4 * elems)?,
            GGML_TYPE_F16 => r.take(2 * elems)?,
            t => {
                return Err(Ct2Error::Malformed(format!(
                    "tensor {} of ggml type {t}: not an f32/f16 file",
                    String::from_utf8_lossy(name)
                )));
            }
        };
        // whisper.cpp loads 2-D f16 matrices as the file's weight type; dims[0] is the
        // contiguous row length, which q8_0 cuts in blocks.
        let quantise = ttype == GGML_TYPE_F16 && n_dims == 2 && dims[0] % QK8_0 == 0;
        out.extend_from_slice(&n_dims.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        let t = if quantise { ttype_q } else { ttype };
        out.extend_from_slice(&t.to_le_bytes());
        for d in &dims {
            out.extend_from_slice(&(*d as i32).to_le_bytes());
        }
        out.extend_from_slice(name);
        if quantise {
            match quant {
                Quant::Q8_0 => quantise_q8_0(data, &mut out),
                Quant::Q5_1 => quantise_q5_1(data, &mut out),
            }
        } else {
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// f16 little-endian values → q8_0 blocks (`f16 d`, 32 × `i8`), as ggml's
/// `quantize_row_q8_0_ref`.
fn quantise_q8_0(f16_bytes: &[u8], out: &mut Vec<u8>) {
    for block in f16_values(f16_bytes).chunks(QK8_0) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for v in block {
            out.push((v * id).round() as i8 as u8);
        }
    }
}

/// f16 little-endian values → q5_1 blocks (`f16 d`, `f16 m`, 32 high bits, 16 bytes of
/// low nibbles: value j and j + 16 share a byte), as ggml's `quantize_row_q5_1_ref`.
fn quantise_q5_1(f16_bytes: &[u8], out: &mut Vec<u8>) {
    for block in f16_values(f16_bytes).chunks(QK8_0) {
        let min = block.iter().fold(f32::INFINITY, |m, v| m.min(*v));
        let max = block.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        let half = QK8_0 / 2;
        let q = |v: f32| ((v - min) * id + 0.5) as u8; // truncation, as ggml's (uint8_t) cast
        let mut qh = 0u32;
        let mut qs = [0u8; QK8_0 / 2];
        for j in 0..half {
            let (a, b) = (q(block[j]), q(block[j + half]));
            qs[j] = (a & 0x0f) | ((b & 0x0f) << 4);
            qh |= u32::from((a & 0x10) >> 4) << j;
            qh |= u32::from((b & 0x10) >> 4) << (j + half);
        }
        out.extend_from_slice(&qh.to_le_bytes());
        out.extend_from_slice(&qs);
    }
}

/// Little-endian f16 bytes as f32 values (what both quantisers start from).
fn f16_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

fn count(v: i32) -> Result<usize, Ct2Error> {
    usize::try_from(v).map_err(|_| Ct2Error::Malformed(format!("negative size {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(vals: &[f32]) -> Vec<u8> {
        vals.iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect()
    }

    #[test]
    fn a_block_keeps_its_largest_value_and_rounds_the_rest() {
        let vals: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 8.0).collect();
        let bytes = f16_bytes(&vals);
        let mut out = Vec::new();
        quantise_q8_0(&bytes, &mut out);
        assert_eq!(out.len(), 34);
        let d = f16::from_le_bytes([out[0], out[1]]).to_f32();
        assert!((d - 2.0 / 127.0).abs() < 1e-4, "{d}");
        assert_eq!(out[2] as i8, -127, "the largest magnitude maps to ±127");
        for (q, v) in out[2..].iter().zip(&vals) {
            assert!(((*q as i8) as f32 * d - v).abs() <= d / 2.0 + 1e-3);
        }
    }

    #[test]
    fn a_q5_1_block_spans_its_range_in_32_steps() {
        let vals: Vec<f32> = (0..32).map(|i| (i as f32 - 8.0) / 4.0).collect();
        let bytes = f16_bytes(&vals);
        let mut out = Vec::new();
        quantise_q5_1(&bytes, &mut out);
        assert_eq!(out.len(), 24);
        let d = f16::from_le_bytes([out[0], out[1]]).to_f32();
        let m = f16::from_le_bytes([out[2], out[3]]).to_f32();
        assert_eq!(m, -2.0);
        assert!((d - 7.75 / 31.0).abs() < 1e-3, "{d}");
        let qh = u32::from_le_bytes([out[4], out[5], out[6], out[7]]);
        // Dequantised as whisper.cpp does: each value within half a step.
        for (j, v) in vals.iter().enumerate() {
            let nib = if j < 16 {
                out[8 + j] & 0x0f
            } else {
                out[8 + j - 16] >> 4
            };
            let q = nib | ((((qh >> j) & 1) as u8) << 4);
            assert!((q as f32 * d + m - v).abs() <= d / 2.0 + 1e-3, "{j}: {q}");
        }
    }

    #[test]
    fn only_2d_f16_matrices_are_quantised_and_a_truncated_file_is_an_error() {
        let mut f = Vec::new();
        f.extend_from_slice(&0x6767_6d6cu32.to_le_bytes());
        for v in [1i32, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&1i32.to_le_bytes()); // mel 1 × 1
        f.extend_from_slice(&1i32.to_le_bytes());
        f.extend_from_slice(&0.5f32.to_le_bytes());
        f.extend_from_slice(&1i32.to_le_bytes()); // one token "a"
        f.extend_from_slice(&1i32.to_le_bytes());
        f.push(b'a');
        let tensor = |f: &mut Vec<u8>, name: &str, ttype: i32, dims: &[i32]| {
            f.extend_from_slice(&(dims.len() as i32).to_le_bytes());
            f.extend_from_slice(&(name.len() as i32).to_le_bytes());
            f.extend_from_slice(&ttype.to_le_bytes());
            for d in dims {
                f.extend_from_slice(&d.to_le_bytes());
            }
            f.extend_from_slice(name.as_bytes());
            let n: i32 = dims.iter().product();
            let size = if ttype == 0 { 4 } else { 2 };
            f.extend(std::iter::repeat_n(0u8, n as usize * size));
        };
        tensor(&mut f, "w", GGML_TYPE_F16, &[64, 2]);
        tensor(&mut f, "conv", GGML_TYPE_F16, &[3, 32, 2]);
        tensor(&mut f, "ln", GGML_TYPE_F32, &[64]);
        let q = whisper_q8_0(&f).unwrap();
        // Header + mel + vocab unchanged but the ftype.
        assert_eq!(&q[44..48], &FTYPE_Q8_0.to_le_bytes());
        // w: 4 blocks of 34 bytes instead of 256 bytes of f16.
        assert_eq!(q.len(), f.len() - 256 + 4 * 34);
        assert_eq!(&q[77..81], &GGML_TYPE_Q8_0.to_le_bytes(), "w's type");
        assert!(whisper_q8_0(&f[..f.len() - 1]).is_err());
    }
}
