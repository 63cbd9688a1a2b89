//! The `info` event Panda answers `describe` with: what it serves (speech-to-text,
//! text-to-speech, wake word), shaped the way the Python `wyoming` client parses it —
//! every program and model has `name`, `description`, `attribution {name, url}`,
//! `installed` and `version`, and `languages`/`voices`/`models` are lists (a missing one
//! makes the client raise).

use serde_json::{Value, json};

use super::codec::Event;

/// What one served kind offers.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The model or voice names, each with its languages.
    pub models: Vec<(String, Vec<String>)>,
}

/// What Panda serves; `None` for a kind it does not serve.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Whisper.
    pub asr: Option<Offer>,
    /// Kokoro voices.
    pub tts: Option<Offer>,
    /// Wake words.
    pub wake: Option<Offer>,
}

fn attribution(name: &str, url: &str) -> Value {
    json!({"name": name, "url": url})
}

/// The program entry (Panda itself; it has no public home page, and the field must be
/// a string).
fn program(kind: &str, what: &str, models_key: &str, models: Value) -> Value {
    json!({
        "name": format!("panda-{kind}"),
        "description": what,
        "attribution": attribution("Panda", ""),
        "installed": true,
        "version": env!("CARGO_PKG_VERSION"),
        models_key: models,
        "supports_transcript_streaming": kind == "asr",
        "supports_synthesize_streaming": kind == "tts",
    })
}

fn models(offer: &Offer, by: &Value) -> Value {
    Value::Array(
        offer
            .models
            .iter()
            .map(|(name, languages)| {
                json!({
                    "name": name,
                    "description": name,
                    "attribution": by,
                    "installed": true,
                    "version": Value::Null,
                    "languages": languages,
                })
            })
            .collect(),
    )
}

/// The `info` event for `served`.
pub fn info(served: &Served) -> Event {
    let mut ev = Event::new("info");
    let mut list = |key: &str, offer: &Option<Offer>, what: &str, models_key: &str, by: Value| {
        let v = match offer {
            Some(o) => vec![program(key, what, models_key, models(o, &by))],
            None => Vec::new(),
        };
        ev.data.insert(key.to_string(), Value::Array(v));
    };
    list(
        "asr",
        &served.asr,
        "Whisper speech-to-text (whisper.cpp)",
        "models",
        attribution("OpenAI Whisper", "https://github.com/openai/whisper"),
    );
    list(
        "tts",
        &served.tts,
        "Kokoro text-to-speech (ONNX Runtime)",
        "voices",
        attribution("Kokoro-82M", "https://huggingface.co/hexgrad/Kokoro-82M"),
    );
    list(
        "wake",
        &served.wake,
        "Wake word (rustpotter templates, Whisper check)",
        "models",
        attribution("rustpotter", "https://github.com/GiviMAD/rustpotter"),
    );
    for key in ["handle", "intent", "mic", "snd"] {
        ev.data.insert(key.to_string(), Value::Array(Vec::new()));
    }
    ev
}

/// What a satellite says of itself in `info` (Python's `wyoming.info.Satellite`).
#[derive(Debug, Clone)]
pub struct SatelliteInfo {
    /// The name Home Assistant shows.
    pub name: String,
    /// The room, if set.
    pub area: Option<String>,
    /// The wake word it listens for (its id, e.g. `hey_panda`) and its phrase.
    pub wake_word: (String, String),
}

/// The `info` event of a satellite: the satellite entry (with a local VAD: Panda
/// endpoints the question itself) and its wake word, the services of `served` too.
pub fn satellite_info(served: &Served, sat: &SatelliteInfo) -> Event {
    let mut ev = info(served);
    let by = attribution("Panda", "");
    ev.data.insert(
        "satellite".into(),
        json!({
            "name": sat.name,
            "description": "Panda voice satellite (wake word, VAD and echo cancellation on the device)",
            "attribution": by,
            "installed": true,
            "version": env!("CARGO_PKG_VERSION"),
            "area": sat.area,
            "has_vad": true,
            "active_wake_words": [sat.wake_word.0],
            "max_active_wake_words": 1,
            "supports_trigger": false,
        }),
    );
    if served.wake.is_none() {
        // The satellite's own wake word, so the hub can name the phrase it heard.
        let (id, phrase) = &sat.wake_word;
        ev.data.insert(
            "wake".into(),
            json!([{
                "name": "panda-wake",
                "description": "Wake word (detected on the satellite)",
                "attribution": attribution("rustpotter", "https://github.com/GiviMAD/rustpotter"),
                "installed": true,
                "version": env!("CARGO_PKG_VERSION"),
                "models": [{
                    "name": id,
                    "description": phrase,
                    "attribution": by,
                    "installed": true,
                    "version": Value::Null,
                    "languages": ["en"],
                    "phrase": phrase,
                }],
            }]),
        );
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lists_every_field_the_python_client_needs() {
        let served = Served {
            asr: Some(Offer {
                models: vec![("tiny.en".into(), vec!["en".into()])],
            }),
            tts: Some(Offer {
                models: vec![("af_heart".into(), vec!["en-us".into()])],
            }),
            wake: None,
        };
        let ev = info(&served);
        assert_eq!(ev.kind, "info");
        let asr = &ev.data["asr"][0];
        for key in [
            "name",
            "description",
            "attribution",
            "installed",
            "version",
            "models",
        ] {
            assert!(asr.get(key).is_some(), "asr.{key}: {asr}");
        }
        assert_eq!(asr["attribution"]["name"], "Panda");
        assert_eq!(asr["models"][0]["languages"][0], "en");
        assert!(asr["models"][0]["attribution"]["url"].is_string());
        let tts = &ev.data["tts"][0];
        assert_eq!(tts["voices"][0]["name"], "af_heart");
        assert_eq!(tts["supports_synthesize_streaming"], true);
        // Kinds not served are empty lists, never missing.
        assert_eq!(ev.data["wake"], json!([]));
        assert_eq!(ev.data["mic"], json!([]));
    }
}
