//! CTranslate2 Whisper → whisper.cpp ggml conversion, in Rust.
//!
//! The Whisper weights this project can obtain ship as CTranslate2 `model.bin` files
//! (version 6). whisper.cpp reads its legacy ggml format. This module parses the CT2
//! container and writes the ggml file, deterministically (same input, same bytes):
//!
//! - CT2: u32 version, spec name, u32 revision, u32 variable count, then per variable a
//!   name, u8 rank, u32 dims, u8 dtype, u32 byte count and data; then aliases.
//! - ggml: magic, 11 i32 hparams, the mel filter bank, the vocabulary, then tensors
//!   (n_dims, name length, ftype, reversed dims, name, data).
//!
//! CT2 fuses self-attention q/k/v into one `linear_0` (split in thirds; whisper's key has
//! no bias) and cross-attention k/v into `linear_1` (split in halves).

use std::collections::BTreeMap;
use std::io::Write;

use half::f16;

/// ggml file magic ("ggml").
pub const GGML_MAGIC: u32 = 0x6767_6d6c;

/// Errors converting a model.
#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    /// The file ended early or a field is out of range.
    #[error("malformed CTranslate2 file: {0}")]
    Malformed(String),
    /// A file version or layout this converter does not handle.
    #[error("unsupported CTranslate2 model: {0}")]
    Unsupported(String),
    /// A variable the Whisper layout needs is absent.
    #[error("CTranslate2 model lacks variable {0}")]
    MissingVariable(String),
    /// Writing the output failed.
    #[error("writing ggml output: {0}")]
    Io(#[from] std::io::Error),
}

/// Element types of CT2 variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 8-bit int (quantized weights).
    I8,
    /// 16-bit int.
    I16,
    /// 32-bit int.
    I32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    fn from_u8(v: u8) -> Result<Self, Ct2Error> {
        Ok(match v {
            0 => DType::F32,
            1 => DType::I8,
            2 => DType::I16,
            3 => DType::I32,
            4 => DType::F16,
            5 => DType::BF16,
            x => return Err(Ct2Error::Malformed(format!("unknown dtype {x}"))),
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    fn code(self) -> u8 {
        match self {
            DType::F32 => 0,
            DType::I8 => 1,
            DType::I16 => 2,
            DType::I32 => 3,
            DType::F16 => 4,
            DType::BF16 => 5,
        }
    }
}

/// One CT2 variable.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// Shape, outermost first.
    pub shape: Vec<u32>,
    /// Element type.
    pub dtype: DType,
    /// Raw little-endian data.
    pub data: Vec<u8>,
}

impl Variable {
    /// Elements as f32, whatever the stored float type.
    pub fn to_f32(&self) -> Result<Vec<f32>, Ct2Error> {
        Ok(match self.dtype {
            DType::F32 => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            d => {
                return Err(Ct2Error::Unsupported(format!(
                    "{d:?} weights (quantized models are not supported; use a float16 model)"
                )));
            }
        })
    }

    /// A scalar integer variable's value.
    pub fn scalar_int(&self) -> Result<i64, Ct2Error> {
        let d = &self.data;
        Ok(match (self.dtype, d.len()) {
            (DType::I8, 1) => d[0] as i8 as i64,
            (DType::I16, 2) => i16::from_le_bytes([d[0], d[1]]) as i64,
            (DType::I32, 4) => i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64,
            _ => return Err(Ct2Error::Malformed("expected an integer scalar".into())),
        })
    }
}

/// A parsed CT2 model: variables by name (aliases resolved to copies of their targets).
#[derive(Debug, Clone, PartialEq)]
pub struct Ct2Model {
    /// Spec name, e.g. `WhisperSpec`.
    pub spec: String,
    /// Variables by name.
    pub vars: BTreeMap<String, Variable>,
}

/// A bounds-checked little-endian reader over a model file (also the q8_0 quantiser's).
pub(super) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Self { b, pos: 0 }
    }
    /// Bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], Ct2Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                Ct2Error::Malformed(format!("truncated at byte {} (wanted {n} more)", self.pos))
            })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Ct2Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Ct2Error> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    pub(super) fn u32(&mut self) -> Result<u32, Ct2Error> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(super) fn i32(&mut self) -> Result<i32, Ct2Error> {
        Ok(self.u32()? as i32)
    }
    fn string(&mut self) -> Result<String, Ct2Error> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        let s = s.strip_suffix(&[0]).unwrap_or(s);
        String::from_utf8(s.to_vec()).map_err(|_| Ct2Error::Malformed("name is not UTF-8".into()))
    }
}

/// Parses a CT2 `model.bin` (version 6).
pub fn parse(bytes: &[u8]) -> Result<Ct2Model, Ct2Error> {
    let mut r = Reader::new(bytes);
    let version = r.u32()?;
    if version != 6 {
        return Err(Ct2Error::Unsupported(format!(
            "binary version {version}, expected 6"
        )));
    }
    let spec = r.string()?;
    let _revision = r.u32()?;
    let n = r.u32()? as usize;
    let mut vars = BTreeMap::new();
    for _ in 0..n {
        let name = r.string()?;
        let rank = r.u8()? as usize;
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(r.u32()?);
        }
        let dtype = DType::from_u8(r.u8()?)?;
        let nbytes = r.u32()? as usize;
        let elems: usize = shape.iter().map(|&d| d as usize).product();
        if elems * dtype.size() != nbytes {
            return Err(Ct2Error::Malformed(format!(
                "{name}: {nbytes} bytes for shape {shape:?} of {dtype:?}"
            )));
        }
        let data = r.take(nbytes)?.to_vec();
        vars.insert(name, Variable { shape, dtype, data });
    }
    let n_alias = r.u32()? as usize;
    for _ in 0..n_alias {
        let alias = r.string()?;
        let target = r.string()?;
        let v = vars
            .get(&target)
            .cloned()
            .ok_or_else(|| Ct2Error::Malformed(format!("alias {alias} → unknown {target}")))?;
        vars.insert(alias, v);
    }
    Ok(Ct2Model { spec, vars })
}

/// Serialises a model in CT2 v6 layout (used by tests to build synthetic models).
pub fn write(model: &Ct2Model) -> Vec<u8> {
    let mut o = Vec::new();
    let s = |o: &mut Vec<u8>, t: &str| {
        o.extend_from_slice(&((t.len() + 1) as u16).to_le_bytes());
        o.extend_from_slice(t.as_bytes());
        o.push(0);
    };
    o.extend_from_slice(&6u32.to_le_bytes());
    s(&mut o, &model.spec);
    o.extend_from_slice(&3u32.to_le_bytes());
    o.extend_from_slice(&(model.vars.len() as u32).to_le_bytes());
    for (name, v) in &model.vars {
        s(&mut o, name);
        o.push(v.shape.len() as u8);
        for d in &v.shape {
            o.extend_from_slice(&d.to_le_bytes());
        }
        o.push(v.dtype.code());
        o.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
        o.extend_from_slice(&v.data);
    }
    o.extend_from_slice(&0u32.to_le_bytes());
    o
}

/// Whisper hyper-parameters in ggml header order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hparams {
    /// Vocabulary size (51864 English-only, 51865+ multilingual).
    pub n_vocab: i32,
    /// Encoder positions (1500).
    pub n_audio_ctx: i32,
    /// Encoder width.
    pub n_audio_state: i32,
    /// Encoder heads.
    pub n_audio_head: i32,
    /// Encoder layers.
    pub n_audio_layer: i32,
    /// Decoder positions (448).
    pub n_text_ctx: i32,
    /// Decoder width.
    pub n_text_state: i32,
    /// Decoder heads.
    pub n_text_head: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Mel bands (80 or 128).
    pub n_mels: i32,
}

impl Hparams {
    /// True for English-only models (GPT-2 vocabulary).
    pub fn english_only(&self) -> bool {
        self.n_vocab < 51_865
    }
}

fn get<'m>(m: &'m Ct2Model, name: &str) -> Result<&'m Variable, Ct2Error> {
    m.vars
        .get(name)
        .ok_or_else(|| Ct2Error::MissingVariable(name.to_string()))
}

fn count_layers(m: &Ct2Model, prefix: &str) -> i32 {
    (0..)
        .take_while(|i| {
            m.vars
                .contains_key(&format!("{prefix}/layer_{i}/ffn/linear_0/weight"))
        })
        .count() as i32
}

/// Reads the hyper-parameters from the variables' shapes.
pub fn hparams(m: &Ct2Model) -> Result<Hparams, Ct2Error> {
    if m.spec != "WhisperSpec" {
        return Err(Ct2Error::Unsupported(format!(
            "spec {} is not WhisperSpec",
            m.spec
        )));
    }
    let dim = |name: &str, i: usize| -> Result<i32, Ct2Error> {
        get(m, name)?
            .shape
            .get(i)
            .map(|&d| d as i32)
            .ok_or_else(|| Ct2Error::Malformed(format!("{name} has no dimension {i}")))
    };
    let emb = "decoder/embeddings/weight";
    let epos = "encoder/position_encodings/encodings";
    let dpos = "decoder/position_encodings/encodings";
    Ok(Hparams {
        n_vocab: dim(emb, 0)?,
        n_audio_ctx: dim(epos, 0)?,
        n_audio_state: dim(epos, 1)?,
        n_audio_head: get(m, "encoder/num_heads")?.scalar_int()? as i32,
        n_audio_layer: count_layers(m, "encoder"),
        n_text_ctx: dim(dpos, 0)?,
        n_text_state: dim(dpos, 1)?,
        n_text_head: get(m, "decoder/num_heads")?.scalar_int()? as i32,
        n_text_layer: count_layers(m, "decoder"),
        n_mels: dim("encoder/conv1/weight", 1)?,
    })
}

/// How a tensor is stored in the ggml file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    F32,
    F16,
}

struct Writer<'w, W: Write> {
    w: &'w mut W,
}

impl<W: Write> Writer<'_, W> {
    fn i32(&mut self, v: i32) -> std::io::Result<()> {
        self.w.write_all(&v.to_le_bytes())
    }

    /// Writes one tensor: `shape` outermost first (reversed in the file), `data` as f32.
    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        data: &[f32],
        out: Out,
    ) -> Result<(), Ct2Error> {
        let elems: usize = shape.iter().product();
        if elems != data.len() {
            return Err(Ct2Error::Malformed(format!(
                "{name}: {} values for shape {shape:?}",
                data.len()
            )));
        }
        self.i32(shape.len() as i32)?;
        self.i32(name.len() as i32)?;
        self.i32(if out == Out::F16 { 1 } else { 0 })?;
        for &d in shape.iter().rev() {
            self.i32(d as i32)?;
        }
        self.w.write_all(name.as_bytes())?;
        match out {
            Out::F32 => {
                for v in data {
                    self.w.write_all(&v.to_le_bytes())?;
                }
            }
            Out::F16 => {
                for v in data {
                    self.w.write_all(&f16::from_f32(*v).to_le_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// Converts a parsed CT2 Whisper model to ggml. `mel` is the filter bank (n_mels rows ×
/// 201 columns) and `tokens` the byte strings of the BPE vocabulary in rank order.
pub fn convert_whisper<W: Write>(
    m: &Ct2Model,
    mel: (usize, usize, &[f32]),
    tokens: &[Vec<u8>],
    out: &mut W,
) -> Result<Hparams, Ct2Error> {
    let hp = hparams(m)?;
    if mel.0 != hp.n_mels as usize || mel.0 * mel.1 != mel.2.len() {
        return Err(Ct2Error::Malformed(format!(
            "mel filter bank {}×{} does not fit a model with {} mel bands",
            mel.0, mel.1, hp.n_mels
        )));
    }
    let mut w = Writer { w: out };
    w.w.write_all(&GGML_MAGIC.to_le_bytes())?;
    for v in [
        hp.n_vocab,
        hp.n_audio_ctx,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_audio_layer,
        hp.n_text_ctx,
        hp.n_text_state,
        hp.n_text_head,
        hp.n_text_layer,
        hp.n_mels,
        1, // ftype: mostly f16
    ] {
        w.i32(v)?;
    }
    w.i32(mel.0 as i32)?;
    w.i32(mel.1 as i32)?;
    for v in mel.2 {
        w.w.write_all(&v.to_le_bytes())?;
    }
    w.i32(tokens.len() as i32)?;
    for t in tokens {
        w.i32(t.len() as i32)?;
        w.w.write_all(t)?;
    }

    // Plain copies: (ct2 name, ggml name).
    let shape_of = |v: &Variable| v.shape.iter().map(|&d| d as usize).collect::<Vec<_>>();
    let copy = |w: &mut Writer<W>, src: &str, dst: &str| -> Result<(), Ct2Error> {
        let v = get(m, src)?;
        let shape = shape_of(v);
        let out = if shape.len() >= 2 { Out::F16 } else { Out::F32 };
        w.tensor(dst, &shape, &v.to_f32()?, out)
    };
    let f32_copy = |w: &mut Writer<W>,
                    src: &str,
                    dst: &str,
                    shape: Option<Vec<usize>>|
     -> Result<(), Ct2Error> {
        let v = get(m, src)?;
        let shape = shape.unwrap_or_else(|| shape_of(v));
        w.tensor(dst, &shape, &v.to_f32()?, Out::F32)
    };
    // Splits a fused projection into `parts` equal row blocks.
    let split = |src: &str, parts: usize| -> Result<(Vec<Vec<f32>>, Vec<usize>), Ct2Error> {
        let v = get(m, src)?;
        let data = v.to_f32()?;
        let mut shape = shape_of(v);
        if shape[0] % parts != 0 {
            return Err(Ct2Error::Malformed(format!(
                "{src}: {} rows do not split in {parts}",
                shape[0]
            )));
        }
        shape[0] /= parts;
        let n = data.len() / parts;
        Ok((data.chunks(n).map(|c| c.to_vec()).collect(), shape))
    };
    let write_split =
        |w: &mut Writer<W>, src: &str, names: &[Option<&str>]| -> Result<(), Ct2Error> {
            let (chunks, shape) = split(src, names.len())?;
            let out = if shape.len() >= 2 { Out::F16 } else { Out::F32 };
            for (chunk, name) in chunks.iter().zip(names) {
                if let Some(name) = name {
                    w.tensor(name, &shape, chunk, out)?;
                }
            }
            Ok(())
        };
    let ln = |w: &mut Writer<W>, src: &str, dst: &str| -> Result<(), Ct2Error> {
        copy(w, &format!("{src}/gamma"), &format!("{dst}.weight"))?;
        copy(w, &format!("{src}/beta"), &format!("{dst}.bias"))
    };
    let linear = |w: &mut Writer<W>, src: &str, dst: &str| -> Result<(), Ct2Error> {
        copy(w, &format!("{src}/weight"), &format!("{dst}.weight"))?;
        copy(w, &format!("{src}/bias"), &format!("{dst}.bias"))
    };
    let ffn = |w: &mut Writer<W>, src: &str, dst: &str| -> Result<(), Ct2Error> {
        ln(
            w,
            &format!("{src}/ffn/layer_norm"),
            &format!("{dst}.mlp_ln"),
        )?;
        linear(w, &format!("{src}/ffn/linear_0"), &format!("{dst}.mlp.0"))?;
        linear(w, &format!("{src}/ffn/linear_1"), &format!("{dst}.mlp.2"))
    };
    let self_attn = |w: &mut Writer<W>, src: &str, dst: &str| -> Result<(), Ct2Error> {
        ln(
            w,
            &format!("{src}/self_attention/layer_norm"),
            &format!("{dst}.attn_ln"),
        )?;
        let q = format!("{dst}.attn.query");
        let k = format!("{dst}.attn.key");
        let v = format!("{dst}.attn.value");
        write_split(
            w,
            &format!("{src}/self_attention/linear_0/weight"),
            &[
                Some(&format!("{q}.weight")),
                Some(&format!("{k}.weight")),
                Some(&format!("{v}.weight")),
            ],
        )?;
        // Whisper's key projection has no bias: the middle third is dropped.
        write_split(
            w,
            &format!("{src}/self_attention/linear_0/bias"),
            &[Some(&format!("{q}.bias")), None, Some(&format!("{v}.bias"))],
        )?;
        linear(
            w,
            &format!("{src}/self_attention/linear_1"),
            &format!("{dst}.attn.out"),
        )
    };

    // Encoder.
    f32_copy(
        &mut w,
        "encoder/position_encodings/encodings",
        "encoder.positional_embedding",
        None,
    )?;
    copy(&mut w, "encoder/conv1/weight", "encoder.conv1.weight")?;
    let s = hp.n_audio_state as usize;
    f32_copy(
        &mut w,
        "encoder/conv1/bias",
        "encoder.conv1.bias",
        Some(vec![s, 1]),
    )?;
    copy(&mut w, "encoder/conv2/weight", "encoder.conv2.weight")?;
    f32_copy(
        &mut w,
        "encoder/conv2/bias",
        "encoder.conv2.bias",
        Some(vec![s, 1]),
    )?;
    for i in 0..hp.n_audio_layer {
        let src = format!("encoder/layer_{i}");
        let dst = format!("encoder.blocks.{i}");
        self_attn(&mut w, &src, &dst)?;
        ffn(&mut w, &src, &dst)?;
    }
    ln(&mut w, "encoder/layer_norm", "encoder.ln_post")?;

    // Decoder.
    f32_copy(
        &mut w,
        "decoder/position_encodings/encodings",
        "decoder.positional_embedding",
        None,
    )?;
    copy(
        &mut w,
        "decoder/embeddings/weight",
        "decoder.token_embedding.weight",
    )?;
    for i in 0..hp.n_text_layer {
        let src = format!("decoder/layer_{i}");
        let dst = format!("decoder.blocks.{i}");
        self_attn(&mut w, &src, &dst)?;
        ln(
            &mut w,
            &format!("{src}/attention/layer_norm"),
            &format!("{dst}.cross_attn_ln"),
        )?;
        linear(
            &mut w,
            &format!("{src}/attention/linear_0"),
            &format!("{dst}.cross_attn.query"),
        )?;
        let k = format!("{dst}.cross_attn.key");
        let v = format!("{dst}.cross_attn.value");
        write_split(
            &mut w,
            &format!("{src}/attention/linear_1/weight"),
            &[Some(&format!("{k}.weight")), Some(&format!("{v}.weight"))],
        )?;
        write_split(
            &mut w,
            &format!("{src}/attention/linear_1/bias"),
            &[None, Some(&format!("{v}.bias"))],
        )?;
        linear(
            &mut w,
            &format!("{src}/attention/linear_2"),
            &format!("{dst}.cross_attn.out"),
        )?;
        ffn(&mut w, &src, &dst)?;
    }
    ln(&mut w, "decoder/layer_norm", "decoder.ln")?;
    Ok(hp)
}

/// Parses a `.tiktoken` file (`base64 rank` per line) into token byte strings, rank order.
pub fn parse_tiktoken(text: &str) -> Result<Vec<Vec<u8>>, Ct2Error> {
    use base64::Engine;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let b64 = line.split_whitespace().next().unwrap_or("");
        // The multilingual vocabulary's last token is "=": padding alone, the empty
        // token (Python's lenient b64decode reads it so).
        if b64.trim_matches('=').is_empty() {
            out.push(Vec::new());
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Ct2Error::Malformed(format!("tiktoken line {}: {e}", i + 1)))?;
        out.push(bytes);
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn var(shape: &[u32], f: impl Fn(usize) -> f32) -> Variable {
        let n: usize = shape.iter().map(|&d| d as usize).product();
        Variable {
            shape: shape.to_vec(),
            dtype: DType::F16,
            data: (0..n)
                .flat_map(|i| f16::from_f32(f(i)).to_le_bytes())
                .collect(),
        }
    }

    fn scalar_i16(v: i16) -> Variable {
        Variable {
            shape: vec![],
            dtype: DType::I16,
            data: v.to_le_bytes().to_vec(),
        }
    }

    /// A complete, tiny Whisper in CT2 layout: d=4, 1 encoder and 1 decoder layer,
    /// 8 tokens, 2 mel bands. Values encode their position so splits can be checked.
    pub(crate) fn synthetic() -> Ct2Model {
        let d = 4u32;
        let mut v = BTreeMap::new();
        let mut put = |n: &str, x: Variable| {
            v.insert(n.to_string(), x);
        };
        put("encoder/num_heads", scalar_i16(2));
        put("decoder/num_heads", scalar_i16(2));
        put(
            "encoder/position_encodings/encodings",
            var(&[6, d], |i| i as f32),
        );
        put(
            "decoder/position_encodings/encodings",
            var(&[5, d], |i| i as f32),
        );
        put(
            "decoder/embeddings/weight",
            var(&[8, d], |i| i as f32 / 8.0),
        );
        put("encoder/conv1/weight", var(&[d, 2, 3], |i| i as f32));
        put("encoder/conv1/bias", var(&[d], |i| i as f32));
        put("encoder/conv2/weight", var(&[d, d, 3], |i| i as f32));
        put("encoder/conv2/bias", var(&[d], |i| i as f32));
        for p in ["encoder/layer_0", "decoder/layer_0"] {
            for ln in ["self_attention/layer_norm", "ffn/layer_norm"] {
                put(&format!("{p}/{ln}/gamma"), var(&[d], |_| 1.0));
                put(&format!("{p}/{ln}/beta"), var(&[d], |_| 0.0));
            }
            put(
                &format!("{p}/self_attention/linear_0/weight"),
                var(&[3 * d, d], |i| i as f32),
            );
            put(
                &format!("{p}/self_attention/linear_0/bias"),
                var(&[3 * d], |i| i as f32),
            );
            put(
                &format!("{p}/self_attention/linear_1/weight"),
                var(&[d, d], |i| i as f32),
            );
            put(
                &format!("{p}/self_attention/linear_1/bias"),
                var(&[d], |i| i as f32),
            );
            put(
                &format!("{p}/ffn/linear_0/weight"),
                var(&[2 * d, d], |i| i as f32),
            );
            put(
                &format!("{p}/ffn/linear_0/bias"),
                var(&[2 * d], |i| i as f32),
            );
            put(
                &format!("{p}/ffn/linear_1/weight"),
                var(&[d, 2 * d], |i| i as f32),
            );
            put(&format!("{p}/ffn/linear_1/bias"), var(&[d], |i| i as f32));
        }
        let p = "decoder/layer_0/attention";
        put(&format!("{p}/layer_norm/gamma"), var(&[d], |_| 1.0));
        put(&format!("{p}/layer_norm/beta"), var(&[d], |_| 0.0));
        put(&format!("{p}/linear_0/weight"), var(&[d, d], |i| i as f32));
        put(&format!("{p}/linear_0/bias"), var(&[d], |i| i as f32));
        put(
            &format!("{p}/linear_1/weight"),
            var(&[2 * d, d], |i| i as f32),
        );
        put(&format!("{p}/linear_1/bias"), var(&[2 * d], |i| i as f32));
        put(&format!("{p}/linear_2/weight"), var(&[d, d], |i| i as f32));
        put(&format!("{p}/linear_2/bias"), var(&[d], |i| i as f32));
        for p in ["encoder/layer_norm", "decoder/layer_norm"] {
            put(&format!("{p}/gamma"), var(&[d], |_| 1.0));
            put(&format!("{p}/beta"), var(&[d], |_| 0.0));
        }
        Ct2Model {
            spec: "WhisperSpec".into(),
            vars: v,
        }
    }

    /// A parsed ggml tensor: (dims as written, ftype, f32 values).
    type GgmlTensor = (Vec<i32>, i32, Vec<f32>);

    /// Reads a ggml file back: (hparams, token count, tensors by name).
    fn read_ggml(b: &[u8]) -> (Vec<i32>, usize, BTreeMap<String, GgmlTensor>) {
        let mut p = 0usize;
        let i32_at = |p: &mut usize| {
            let v = i32::from_le_bytes(b[*p..*p + 4].try_into().unwrap());
            *p += 4;
            v
        };
        assert_eq!(i32_at(&mut p) as u32, GGML_MAGIC);
        let hp: Vec<i32> = (0..11).map(|_| i32_at(&mut p)).collect();
        let (r, c) = (i32_at(&mut p) as usize, i32_at(&mut p) as usize);
        p += r * c * 4;
        let nt = i32_at(&mut p) as usize;
        for _ in 0..nt {
            let l = i32_at(&mut p) as usize;
            p += l;
        }
        let mut t = BTreeMap::new();
        while p < b.len() {
            let nd = i32_at(&mut p) as usize;
            let nl = i32_at(&mut p) as usize;
            let ft = i32_at(&mut p);
            let dims: Vec<i32> = (0..nd).map(|_| i32_at(&mut p)).collect();
            let name = String::from_utf8(b[p..p + nl].to_vec()).unwrap();
            p += nl;
            let n: usize = dims.iter().map(|&d| d as usize).product();
            let vals = if ft == 0 {
                let v = b[p..p + 4 * n]
                    .chunks(4)
                    .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                    .collect();
                p += 4 * n;
                v
            } else {
                let v = b[p..p + 2 * n]
                    .chunks(2)
                    .map(|x| f16::from_le_bytes([x[0], x[1]]).to_f32())
                    .collect();
                p += 2 * n;
                v
            };
            assert!(
                t.insert(name, (dims, ft, vals)).is_none(),
                "duplicate tensor"
            );
        }
        (hp, nt, t)
    }

    fn convert(m: &Ct2Model) -> Vec<u8> {
        let mel = vec![0.5f32; 2 * 201];
        let tokens: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i]).collect();
        let mut out = Vec::new();
        convert_whisper(m, (2, 201, &mel), &tokens, &mut out).unwrap();
        out
    }

    #[test]
    fn parse_roundtrips_and_resolves_aliases() {
        let m = synthetic();
        let mut bytes = write(&m);
        assert_eq!(parse(&bytes).unwrap(), m);
        // Add an alias: decoder/projection/weight → decoder/embeddings/weight.
        bytes.truncate(bytes.len() - 4);
        bytes.extend_from_slice(&1u32.to_le_bytes());
        for s in ["decoder/projection/weight", "decoder/embeddings/weight"] {
            bytes.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            bytes.extend_from_slice(s.as_bytes());
            bytes.push(0);
        }
        let p = parse(&bytes).unwrap();
        assert_eq!(
            p.vars["decoder/projection/weight"],
            p.vars["decoder/embeddings/weight"]
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_errors() {
        let bytes = write(&synthetic());
        let err = parse(&bytes[..bytes.len() / 2]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let err = parse(b"GGUF\0\0\0\0").unwrap_err().to_string();
        assert!(err.contains("version"), "{err}");
    }

    #[test]
    fn hparams_from_shapes() {
        let hp = hparams(&synthetic()).unwrap();
        assert_eq!(
            hp,
            Hparams {
                n_vocab: 8,
                n_audio_ctx: 6,
                n_audio_state: 4,
                n_audio_head: 2,
                n_audio_layer: 1,
                n_text_ctx: 5,
                n_text_state: 4,
                n_text_head: 2,
                n_text_layer: 1,
                n_mels: 2
            }
        );
        assert!(hp.english_only());
    }

    #[test]
    fn conversion_layout_splits_and_types() {
        let out = convert(&synthetic());
        let (hp, nt, t) = read_ggml(&out);
        assert_eq!(hp, vec![8, 6, 4, 2, 1, 5, 4, 2, 1, 2, 1]);
        assert_eq!(nt, 5);
        // Every tensor whisper.cpp's loader expects for 1+1 layers is there, nothing else.
        // Encoder: pos + 2 convs (4) + block (attn 9, mlp 6) + ln_post 2. Decoder: pos +
        // token embedding + block (self 9, cross 9, mlp 6) + ln 2.
        let encoder = 1 + 4 + 15 + 2;
        let decoder = 2 + 24 + 2;
        assert_eq!(
            t.len(),
            encoder + decoder,
            "{:?}",
            t.keys().collect::<Vec<_>>()
        );
        // Fused q/k/v split in thirds, key without bias.
        let q = &t["encoder.blocks.0.attn.query.weight"];
        let k = &t["encoder.blocks.0.attn.key.weight"];
        let v = &t["encoder.blocks.0.attn.value.weight"];
        assert_eq!(q.0, vec![4, 4], "dims reversed");
        assert_eq!(q.1, 1, "2-D weights are f16");
        assert_eq!(q.2[0], 0.0);
        assert_eq!(k.2[0], 16.0);
        assert_eq!(v.2[0], 32.0);
        assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
        assert_eq!(
            t["encoder.blocks.0.attn.value.bias"].2,
            vec![8.0, 9.0, 10.0, 11.0]
        );
        // Cross-attention k/v split in halves.
        assert_eq!(t["decoder.blocks.0.cross_attn.value.weight"].2[0], 16.0);
        assert_eq!(
            t["decoder.blocks.0.cross_attn.value.bias"].2,
            vec![4.0, 5.0, 6.0, 7.0]
        );
        assert!(!t.contains_key("decoder.blocks.0.cross_attn.key.bias"));
        // Conv biases are f32 [n,1] (dims reversed: [1, n]); positional embeddings f32.
        let cb = &t["encoder.conv1.bias"];
        assert_eq!((cb.0.clone(), cb.1), (vec![1, 4], 0));
        assert_eq!(t["encoder.positional_embedding"].1, 0);
        assert_eq!(t["decoder.positional_embedding"].1, 0);
        assert_eq!(t["decoder.token_embedding.weight"].1, 1);
        assert_eq!(t["encoder.conv1.weight"].0, vec![3, 2, 4]);
        assert_eq!(t["decoder.ln.weight"].1, 0, "1-D tensors are f32");
    }

    #[test]
    fn conversion_is_deterministic() {
        let m = synthetic();
        assert_eq!(convert(&m), convert(&parse(&write(&m)).unwrap()));
    }

    #[test]
    fn missing_variable_and_wrong_mel_are_named() {
        let mut m = synthetic();
        m.vars.remove("decoder/layer_0/attention/linear_2/bias");
        let mel = vec![0.0f32; 2 * 201];
        let err = convert_whisper(&m, (2, 201, &mel), &[], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("linear_2/bias"), "{err}");
        let m = synthetic();
        let mel = vec![0.0f32; 80 * 201];
        let err = convert_whisper(&m, (80, 201, &mel), &[], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("mel"), "{err}");
    }

    #[test]
    fn tiktoken_lines() {
        let t = parse_tiktoken("IQ== 0\nIg== 1\n\naGVsbG8= 2\n").unwrap();
        assert_eq!(t, vec![b"!".to_vec(), b"\"".to_vec(), b"hello".to_vec()]);
        assert!(parse_tiktoken("!!! 0").is_err());
    }
}
