//! Sentence splitting for streamed text: tokens go in as they arrive (from the LLM, or
//! lines from stdin), whole sentences come out as soon as they are certain, so the first
//! sentence is synthesised while the rest is still being generated. Pure, no I/O.
//!
//! A full stop ends a sentence only when what follows proves it: whitespace, then not a
//! lowercase letter. That keeps decimals ("3.5"), abbreviations ("Dr. Smith", "e.g. this"),
//! initials ("J. R. R. Tolkien") and list markers ("1. Eggs") inside their sentence. "!",
//! "?", CJK terminators and line breaks end a sentence at once; closing quotes and
//! brackets stay with the sentence they close. A sentence that grows past `max_chars`
//! without an end is cut at its last clause mark (",", ";", ":", "—") or word boundary,
//! so a run-on answer cannot hold speech back.

/// Words that end with a period but do not end a sentence (compared case-insensitively,
/// without the period).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ave", "rd", "blvd", "capt", "gen",
    "gov", "sen", "rep", "lt", "sgt", "vs", "etc", "e.g", "i.e", "approx", "no", "vol", "fig",
    "inc", "ltd", "co", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "a.m", "p.m", "u.s", "u.k",
];

/// Streaming splitter.
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    buf: String,
    max_chars: usize,
}

impl SentenceSplitter {
    /// A splitter that never returns a sentence longer than `max_chars` characters
    /// (at least 20).
    pub fn new(max_chars: usize) -> Self {
        Self {
            buf: String::new(),
            max_chars: max_chars.max(20),
        }
    }

    /// Adds text; returns every sentence that is now complete, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.next_boundary() {
            let s: String = self.buf.drain(..end).collect();
            let s = s.trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
        }
        out
    }

    /// Ends the stream: returns what is left as the last sentence.
    pub fn finish(&mut self) -> Option<String> {
        let s = std::mem::take(&mut self.buf);
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    /// Byte offset just past the first certain sentence end in the buffer, if any.
    fn next_boundary(&self) -> Option<usize> {
        let b = &self.buf;
        let chars: Vec<(usize, char)> = b.char_indices().collect();
        let mut n_chars = 0;
        let mut i = 0;
        while i < chars.len() {
            let (pos, c) = chars[i];
            n_chars += 1;
            if n_chars > self.max_chars {
                return Some(self.cut_long(pos));
            }
            match c {
                '\n' => {
                    if b[..pos].trim().is_empty() {
                        i += 1;
                        continue;
                    }
                    return Some(pos + 1);
                }
                '。' | '！' | '？' => {
                    let j = skip_closers(&chars, i + 1);
                    return Some(byte_at(b, &chars, j));
                }
                '.' | '!' | '?' | '…' => {
                    // Take the whole run of terminators and closers: `?!`, `."`, `!)`.
                    let j = skip_terminators(&chars, i + 1);
                    let Some(&(_, next)) = chars.get(j) else {
                        return None; // wait: the next character decides
                    };
                    if !next.is_whitespace() {
                        i = j;
                        continue; // "3.5", "e.g.x", "U.S.A"
                    }
                    let ends = match c {
                        '!' | '?' => true,
                        _ => {
                            let Some(k) = (j..chars.len()).find(|&k| !chars[k].1.is_whitespace())
                            else {
                                // Only whitespace so far: a line break decides now,
                                // anything else waits for the next word.
                                if chars[j..].iter().any(|&(_, c)| c == '\n') {
                                    return Some(byte_at(b, &chars, j));
                                }
                                return None;
                            };
                            let next_word = chars[k].1;
                            let lowercase_follows = next_word.is_lowercase();
                            let abbreviation = c == '.' && self.period_is_not_an_end(b, pos);
                            !(lowercase_follows || abbreviation)
                        }
                    };
                    if ends {
                        return Some(byte_at(b, &chars, j));
                    }
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        None
    }

    /// The period at `pos` belongs to an abbreviation, an initial or a list marker.
    fn period_is_not_an_end(&self, b: &str, pos: usize) -> bool {
        let before = &b[..pos];
        let word_start = before
            .rfind(|c: char| c.is_whitespace() || c == '(' || c == '"')
            .map(|i| i + 1)
            .unwrap_or(0);
        let word = &before[word_start..];
        let lower = word.to_lowercase();
        if ABBREVIATIONS.contains(&lower.as_str()) {
            return true;
        }
        // An initial: one uppercase letter ("J." in "J. R. R. Tolkien").
        let mut cs = word.chars();
        if let (Some(c), None) = (cs.next(), cs.next())
            && c.is_uppercase()
        {
            return true;
        }
        // A list marker: a short number that opens the sentence ("1. Eggs").
        !word.is_empty()
            && word.len() <= 3
            && word.chars().all(|c| c.is_ascii_digit())
            && before[..word_start].trim().is_empty()
    }

    /// Where to cut a sentence that reached `max_chars` at byte `limit`: after the last
    /// clause mark followed by a space, else at the last space, else at `limit`.
    fn cut_long(&self, limit: usize) -> usize {
        let head = &self.buf[..limit];
        let clause = head
            .char_indices()
            .filter(|&(i, c)| {
                matches!(c, ',' | ';' | ':' | '—')
                    && head[i + c.len_utf8()..].starts_with(char::is_whitespace)
            })
            .map(|(i, c)| i + c.len_utf8())
            .next_back();
        // A clause cut that leaves a tiny fragment is worse than a word cut.
        if let Some(c) = clause.filter(|&c| c > limit / 3) {
            return c;
        }
        match head.rfind(char::is_whitespace) {
            Some(w) if w > 0 => w,
            _ => limit,
        }
    }
}

fn skip_closers(chars: &[(usize, char)], mut j: usize) -> usize {
    while j < chars.len() && is_closer(chars[j].1) {
        j += 1;
    }
    j
}

fn skip_terminators(chars: &[(usize, char)], mut j: usize) -> usize {
    while j < chars.len() && (matches!(chars[j].1, '.' | '!' | '?' | '…') || is_closer(chars[j].1))
    {
        j += 1;
    }
    j
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』')
}

fn byte_at(b: &str, chars: &[(usize, char)], j: usize) -> usize {
    chars.get(j).map(|&(p, _)| p).unwrap_or(b.len())
}

/// Splits `text` into one sentence list at once (for whole texts such as `panda say`).
pub fn split_all(text: &str, max_chars: usize) -> Vec<String> {
    let mut s = SentenceSplitter::new(max_chars);
    let mut out = s.push(text);
    out.extend(s.finish());
    out
}

/// Words a natural phrase break can come before (a split there keeps the prosody of both
/// halves): conjunctions, prepositions, relative pronouns.
const BREAK_WORDS: &[&str] = &[
    "and", "but", "or", "so", "because", "while", "when", "which", "that", "who", "where", "with",
    "without", "in", "on", "at", "to", "for", "from", "of", "by", "about", "after", "before",
    "until", "than", "then", "if", "as", "into", "over", "under", "through",
];

/// Splits the first sentence of an answer into a short first fragment and the rest, so
/// the first audio is short and comes early while the rest is synthesised behind it.
///
/// The fragment aims at `target_words` words (at least 3, at most `target_words + 2`)
/// and ends where a speaker could pause: at a clause mark, else before a conjunction or
/// preposition. A sentence too short to leave two real phrases, or with no natural break
/// in range (up to 12 words), is returned whole; a longer one is cut at the target.
/// `target_words = 0` disables the split.
pub fn first_fragment(sentence: &str, target_words: usize) -> (String, Option<String>) {
    let whole = (sentence.trim().to_string(), None);
    if target_words == 0 {
        return whole;
    }
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let min = target_words.clamp(1, 3);
    let max = target_words + 2;
    if words.len() < 2 * min {
        return whole;
    }
    let upper = max.min(words.len() - min);
    let mut best: Option<(u8, usize, usize)> = None; // (score, distance, p)
    // A clause mark may end a fragment as short as two words ("Sure thing,").
    for p in 2.min(min)..=upper {
        let prev = words[p - 1];
        let next: String = words[p]
            .chars()
            .filter(|c| c.is_alphanumeric())
            .collect::<String>()
            .to_lowercase();
        let score = if prev.ends_with([',', ';', ':', '—']) {
            0
        } else if p < min {
            continue;
        } else if BREAK_WORDS.contains(&next.as_str()) {
            1
        } else {
            2
        };
        let cand = (score, p.abs_diff(target_words), p);
        if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
            best = Some(cand);
        }
    }
    let Some((score, _, p)) = best else {
        return whole;
    };
    if score == 2 && words.len() <= 12 {
        return whole;
    }
    (words[..p].join(" "), Some(words[p..].join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(t: &str) -> Vec<String> {
        split_all(t, 300)
    }

    #[test]
    fn plain_sentences() {
        assert_eq!(
            all("Hello there. How are you? I am fine! Good"),
            ["Hello there.", "How are you?", "I am fine!", "Good"]
        );
    }

    #[test]
    fn abbreviations_decimals_and_initials() {
        assert_eq!(
            all("Dr. Smith paid $3.50 for it. J. R. R. Tolkien wrote it, e.g. this one. Done."),
            [
                "Dr. Smith paid $3.50 for it.",
                "J. R. R. Tolkien wrote it, e.g. this one.",
                "Done."
            ]
        );
        assert_eq!(all("It is 3.5 km. Next."), ["It is 3.5 km.", "Next."]);
        assert_eq!(all("The U.S. economy grew."), ["The U.S. economy grew."]);
    }

    #[test]
    fn ellipses_and_quotes() {
        assert_eq!(
            all("Well... I think so. He said \"Stop.\" Then he left… Really."),
            [
                "Well...",
                "I think so.",
                "He said \"Stop.\"",
                "Then he left…",
                "Really."
            ]
        );
        assert_eq!(all("Hmm… maybe not."), ["Hmm… maybe not."]);
        assert_eq!(all("Really?! Yes."), ["Really?!", "Yes."]);
    }

    #[test]
    fn numbered_lists() {
        assert_eq!(
            all("You need:\n1. Eggs\n2. Milk\n3. Flour"),
            ["You need:", "1. Eggs", "2. Milk", "3. Flour"]
        );
        assert_eq!(all("1. Eggs. 2. Milk."), ["1. Eggs.", "2. Milk."]);
    }

    #[test]
    fn streaming_waits_for_proof() {
        let mut s = SentenceSplitter::new(300);
        assert!(s.push("It costs 3").is_empty());
        assert!(s.push(".").is_empty()); // could be a decimal
        assert!(s.push("5 dollars.").is_empty()); // could be "… dollars. the" — wait
        assert_eq!(s.push(" The"), ["It costs 3.5 dollars."]);
        assert!(s.push(" end is near").is_empty());
        assert_eq!(s.push("!"), Vec::<String>::new()); // "!?" may follow
        assert_eq!(s.push(" "), ["The end is near!"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn token_by_token_equals_whole() {
        let text = "Sure! The answer is 42. Dr. Who lives at No. 7, e.g. in London. \
                    Prices rose 3.5% in 2024… Shall I go on? \"Yes,\" she said.";
        let whole = all(text);
        let mut s = SentenceSplitter::new(300);
        let mut streamed = Vec::new();
        let chars: Vec<char> = text.chars().collect();
        for c in chars.chunks(2) {
            streamed.extend(s.push(&c.iter().collect::<String>()));
        }
        streamed.extend(s.finish());
        assert_eq!(streamed, whole);
        assert_eq!(whole.len(), 6, "{whole:?}");
    }

    #[test]
    fn long_sentences_are_cut_at_clauses_or_words() {
        let text = "word ".repeat(100);
        let out = split_all(&text, 60);
        assert!(out.iter().all(|s| s.chars().count() <= 60), "{out:?}");
        assert_eq!(out.join(" ").split_whitespace().count(), 100);
        let text = format!(
            "{}, {}.",
            "alpha ".repeat(8).trim(),
            "beta ".repeat(8).trim()
        );
        let out = split_all(&text, 60);
        assert!(out[0].ends_with(','), "{out:?}");
    }

    #[test]
    fn cjk_terminators() {
        assert_eq!(all("你好。今天很好！"), ["你好。", "今天很好！"]);
    }

    fn frag(s: &str) -> (String, Option<String>) {
        first_fragment(s, 4)
    }

    #[test]
    fn first_fragment_breaks_where_a_speaker_would_pause() {
        assert_eq!(
            frag("Sure thing, the weather today is sunny and warm."),
            (
                "Sure thing,".to_string(),
                Some("the weather today is sunny and warm.".to_string())
            )
        );
        // A clause mark in range wins.
        assert_eq!(
            frag("Here are the headlines: markets rose this morning.").0,
            "Here are the headlines:"
        );
        // Else a break word near the target.
        assert_eq!(
            frag("The weather today is sunny with a high of 22 degrees and a light breeze.").0,
            "The weather today is sunny"
        );
        // Short sentences, or no natural break within 12 words, stay whole.
        assert_eq!(frag("Paris is the capital of France.").1, None);
        assert_eq!(frag("Yes, it is.").1, None);
        // Long without a break: cut at the target.
        let long = "Photosynthesis lets green plants turn sunlight water carbon dioxide nutrients minerals energy sugar oxygen everywhere.";
        assert_eq!(frag(long).0.split_whitespace().count(), 4);
        assert_eq!(
            first_fragment("one two three four five six seven", 0).1,
            None
        );
    }
}
