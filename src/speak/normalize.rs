//! Text normalisation before phonemization: text is rewritten the way a person would read
//! it aloud. Pure functions, no state; called on the TTS owner thread per sentence.
//!
//! Why: espeak-ng reads "Dr. Smith" as "drive Smith"-like fragments, "3:30" as "three
//! colon thirty", "$3.50" digit by digit in places, and markdown stars or emoji as nothing
//! useful. The rules here are English (`en-*` languages); other languages get only the
//! language-neutral clean-up (emoji, control characters, markup, quotes), because espeak-ng
//! reads numbers well in its own languages.
//!
//! The same expansion serves the round-trip tests: a transcript's "42" and a reference's
//! "forty-two" compare equal once both are normalised.

/// Result of [`normalize`]: the text to speak and what was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Normalized {
    /// Text ready for the phonemizer.
    pub text: String,
    /// Emoji, control characters and other unspeakable symbols that were dropped.
    pub skipped: usize,
}

/// Rewrites `text` for speech in `language` (an espeak/Kokoro language code such as
/// `en-us`, `en-gb`, `fr-fr`).
pub fn normalize(text: &str, language: &str) -> Normalized {
    let (clean, skipped) = clean(text);
    let text = if language.starts_with("en") {
        english(&clean)
    } else {
        clean
    };
    Normalized {
        text: collapse_ws(&text),
        skipped,
    }
}

/// Characters that cannot be spoken and are dropped: emoji, pictographs, dingbats,
/// variation selectors, joiners, private-use and tag characters.
fn unspeakable(c: char) -> bool {
    matches!(c as u32,
        0x1F000..=0x1FAFF   // emoji, pictographs, flags, mahjong, cards
        | 0x2600..=0x27BF   // misc symbols, dingbats
        | 0x2300..=0x23FF   // technical (⌚ ⏰ …)
        | 0x2B00..=0x2BFF   // arrows, stars
        | 0xFE00..=0xFE0F   // variation selectors
        | 0x200B..=0x200F   // zero-width space/joiners, direction marks
        | 0xE000..=0xF8FF   // private use
        | 0xE0000..=0xE007F // tags
        | 0xFFFC..=0xFFFD) // object replacement, replacement character
}

/// Language-neutral clean-up: drops unspeakable symbols and control characters, strips
/// markdown emphasis/headers/code marks, unifies quotes, dashes and ellipses.
fn clean(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut skipped = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => skipped += 1,
            c if unspeakable(c) => skipped += 1,
            // Markdown emphasis, headers and code marks are not read aloud.
            '*' | '_' | '`' | '#' | '~' => out.push(' '),
            '‘' | '’' | '‚' | '′' => out.push('\''),
            '“' | '”' | '„' | '«' | '»' | '″' => out.push('"'),
            '–' => out.push('-'),
            '.' if chars.peek() == Some(&'.') => {
                while chars.peek() == Some(&'.') {
                    chars.next();
                }
                out.push('…');
            }
            c => out.push(c),
        }
    }
    (out, skipped)
}

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Abbreviations read as words. Matched case-sensitively with their trailing period.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("Mr.", "Mister"),
    ("Mrs.", "Missus"),
    ("Ms.", "Miz"),
    ("Dr.", "Doctor"),
    ("Prof.", "Professor"),
    ("Sr.", "Senior"),
    ("Jr.", "Junior"),
    ("St.", "Saint"),
    ("Mt.", "Mount"),
    ("Ave.", "Avenue"),
    ("Rd.", "Road"),
    ("Blvd.", "Boulevard"),
    ("Capt.", "Captain"),
    ("Gen.", "General"),
    ("Gov.", "Governor"),
    ("Sen.", "Senator"),
    ("Rep.", "Representative"),
    ("Lt.", "Lieutenant"),
    ("Sgt.", "Sergeant"),
    ("vs.", "versus"),
    ("etc.", "et cetera"),
    ("e.g.", "for example"),
    ("i.e.", "that is"),
    ("approx.", "approximately"),
    ("min.", "minutes"),
    ("Jan.", "January"),
    ("Feb.", "February"),
    ("Mar.", "March"),
    ("Apr.", "April"),
    ("Aug.", "August"),
    ("Sep.", "September"),
    ("Sept.", "September"),
    ("Oct.", "October"),
    ("Nov.", "November"),
    ("Dec.", "December"),
];

/// Units after a number: (symbol, singular, plural).
const UNITS: &[(&str, &str, &str)] = &[
    ("km/h", "kilometer per hour", "kilometers per hour"),
    ("mph", "mile per hour", "miles per hour"),
    ("km", "kilometer", "kilometers"),
    ("kg", "kilogram", "kilograms"),
    ("cm", "centimeter", "centimeters"),
    ("mm", "millimeter", "millimeters"),
    ("ml", "milliliter", "milliliters"),
    ("GB", "gigabyte", "gigabytes"),
    ("MB", "megabyte", "megabytes"),
    ("KB", "kilobyte", "kilobytes"),
    ("TB", "terabyte", "terabytes"),
    ("GHz", "gigahertz", "gigahertz"),
    ("MHz", "megahertz", "megahertz"),
    ("kHz", "kilohertz", "kilohertz"),
    ("Hz", "hertz", "hertz"),
    ("ms", "millisecond", "milliseconds"),
    ("lbs", "pound", "pounds"),
    ("lb", "pound", "pounds"),
    ("oz", "ounce", "ounces"),
    ("ft", "foot", "feet"),
    ("mi", "mile", "miles"),
    ("kW", "kilowatt", "kilowatts"),
    ("kWh", "kilowatt hour", "kilowatt hours"),
    ("°C", "degree Celsius", "degrees Celsius"),
    ("°F", "degree Fahrenheit", "degrees Fahrenheit"),
    ("°", "degree", "degrees"),
    ("m", "meter", "meters"),
    ("g", "gram", "grams"),
    ("h", "hour", "hours"),
    ("s", "second", "seconds"),
];

/// Currency symbols before an amount: (symbol, unit singular, plural, cent singular, plural).
const CURRENCIES: &[(char, &str, &str, &str, &str)] = &[
    ('$', "dollar", "dollars", "cent", "cents"),
    ('€', "euro", "euros", "cent", "cents"),
    ('£', "pound", "pounds", "penny", "pence"),
    ('¥', "yen", "yen", "sen", "sen"),
    ('₹', "rupee", "rupees", "paisa", "paise"),
];

/// Symbols read as words anywhere in English text.
const SYMBOLS: &[(char, &str)] = &[
    ('&', " and "),
    ('+', " plus "),
    ('=', " equals "),
    ('@', " at "),
    ('%', " percent "),
    ('×', " times "),
    ('÷', " divided by "),
    ('<', " less than "),
    ('>', " greater than "),
    ('§', " section "),
    ('|', " "),
    ('\\', " "),
    ('^', " "),
    ('{', " "),
    ('}', " "),
    ('[', " "),
    (']', " "),
];

/// English expansion of abbreviations, times, money, percentages, ordinals, years,
/// decimals, ranges and symbols. Works token by token (whitespace-separated), keeping
/// leading and trailing punctuation in place so prosody marks survive.
fn english(text: &str) -> String {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let tok = tokens[i];
        let next = tokens.get(i + 1).copied();
        // Abbreviations keep no period: "Dr. Smith" → "Doctor Smith". A sentence-final
        // "etc." keeps its full stop.
        if let Some((_, full)) = ABBREVIATIONS.iter().find(|(a, _)| *a == tok) {
            let sentence_end =
                next.is_none_or(|n| n.chars().next().is_some_and(|c| c.is_uppercase()));
            let keeps_stop = matches!(tok, "etc." | "vs.") && sentence_end;
            out.push(format!("{full}{}", if keeps_stop { "." } else { "" }));
            i += 1;
            continue;
        }
        // "3:30 pm", "10am", "7 p.m.": the meridiem can be its own token.
        let (lead, core, trail) = split_punct(tok);
        if let Some(m) = next.and_then(meridiem)
            && let Some(words) = time_words(core).or_else(|| hour_words(core))
        {
            let (_, _, ntrail) = split_punct(next.unwrap_or(""));
            out.push(format!("{lead}{words} {m}{ntrail}"));
            i += 2;
            continue;
        }
        // A number followed by a unit token: "5 km", "20 °C".
        if let Some(n) = next
            && is_plain_number(core)
            && trail.is_empty()
        {
            let (_, ucore, utrail) = split_punct(n);
            if let Some(unit) = unit_words(ucore, core) {
                out.push(format!("{lead}{} {unit}{utrail}", number_words(core)));
                i += 2;
                continue;
            }
        }
        out.push(format!("{lead}{}{trail}", expand_core(core)));
        i += 1;
    }
    let joined = out.join(" ");
    let mut s = String::with_capacity(joined.len());
    for c in joined.chars() {
        match SYMBOLS.iter().find(|(sym, _)| *sym == c) {
            Some((_, w)) => s.push_str(w),
            None => s.push(c),
        }
    }
    s
}

/// Splits a token into leading punctuation, core and trailing punctuation. A trailing
/// period is punctuation unless the core is an abbreviation-like "a.m.".
fn split_punct(tok: &str) -> (&str, &str, &str) {
    let is_lead = |c: char| matches!(c, '"' | '\'' | '(' | '[' | '{' | '¿' | '¡');
    let is_trail = |c: char| {
        matches!(
            c,
            '"' | '\'' | ')' | ']' | '}' | ',' | '.' | '!' | '?' | ';' | ':' | '…'
        )
    };
    let start = tok.find(|c: char| !is_lead(c)).unwrap_or(tok.len());
    let body = &tok[start..];
    let mut end = body.len();
    for (idx, c) in body.char_indices().rev() {
        if is_trail(c) {
            end = idx;
        } else {
            break;
        }
    }
    // Keep "a.m." / "p.m." whole.
    let core = &body[..end];
    if (core == "a.m" || core == "p.m") && body[end..].starts_with('.') {
        return (&tok[..start], &body[..end + 1], &body[end + 1..]);
    }
    (&tok[..start], core, &body[end..])
}

fn meridiem(tok: &str) -> Option<&'static str> {
    let (_, core, _) = split_punct(tok);
    match core.to_ascii_lowercase().as_str() {
        "am" | "a.m." | "a.m" => Some("a m"),
        "pm" | "p.m." | "p.m" => Some("p m"),
        _ => None,
    }
}

fn is_plain_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
        && s.starts_with(|c: char| c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_digit())
}

fn unit_words(unit: &str, number: &str) -> Option<String> {
    let (_, one, many) = UNITS.iter().find(|(u, _, _)| *u == unit)?;
    Some(if number == "1" { one } else { many }.to_string())
}

/// Expands one token core (no surrounding punctuation).
fn expand_core(core: &str) -> String {
    if core.is_empty() || !core.contains(|c: char| c.is_ascii_digit()) {
        return core.to_string();
    }
    if let Some(w) = time_words(core) {
        return w;
    }
    // "10am", "7pm"
    for (suffix, m) in [
        ("am", "a m"),
        ("pm", "p m"),
        ("a.m.", "a m"),
        ("p.m.", "p m"),
    ] {
        if let Some(t) = core.to_ascii_lowercase().strip_suffix(suffix)
            && let Some(w) = time_words(t).or_else(|| hour_words(t))
        {
            return format!("{w} {m}");
        }
    }
    if let Some(w) = money_words(core) {
        return w;
    }
    if let Some(n) = core.strip_suffix('%')
        && is_plain_number(n)
    {
        return format!("{} percent", number_words(n));
    }
    if let Some(w) = ordinal_words(core) {
        return w;
    }
    // "5km", "20°C"
    if let Some(split) = core.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
        && split > 0
        && is_plain_number(&core[..split])
        && let Some(u) = unit_words(&core[split..], &core[..split])
    {
        return format!("{} {u}", number_words(&core[..split]));
    }
    // Ranges "3-5" → "three to five"; fractions "1/2".
    if let Some((a, b)) = core.split_once('-')
        && is_plain_number(a)
        && is_plain_number(b)
    {
        return format!("{} to {}", number_words(a), number_words(b));
    }
    if let Some((a, b)) = core.split_once('/')
        && a.chars().all(|c| c.is_ascii_digit())
        && b.chars().all(|c| c.is_ascii_digit())
        && !a.is_empty()
        && !b.is_empty()
    {
        return fraction_words(a, b);
    }
    if is_plain_number(core) {
        return number_words(core);
    }
    // Mixed tokens ("B2B", "mp3", "COVID-19"): expand the digit runs, keep the letters.
    let mut out = String::new();
    let mut run = String::new();
    for c in core.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            if !run.is_empty() {
                out.push_str(&format!(" {} ", integer_words(&run)));
                run.clear();
            }
            out.push(if c == '-' { ' ' } else { c });
        }
    }
    if !run.is_empty() {
        out.push_str(&format!(" {}", integer_words(&run)));
    }
    out.trim().to_string()
}

/// "3:30" → "three thirty", "3:05" → "three oh five", "3:00" → "three o'clock".
fn time_words(s: &str) -> Option<String> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    if h > 24 || m > 59 {
        return None;
    }
    let hw = small(h as u64);
    Some(match m {
        0 => format!("{hw} o'clock"),
        1..=9 => format!("{hw} oh {}", small(m as u64)),
        _ => format!("{hw} {}", small(m as u64)),
    })
}

fn hour_words(s: &str) -> Option<String> {
    let h: u32 = s.parse().ok()?;
    (1..=12).contains(&h).then(|| small(h as u64))
}

/// "$5" → "five dollars", "$3.50" → "three dollars and fifty cents", "$2.5M"/"$2.5m".
fn money_words(s: &str) -> Option<String> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let first = s.chars().next()?;
    let (_, one, many, cent1, cents) = CURRENCIES.iter().find(|c| c.0 == first)?;
    let amount = &s[first.len_utf8()..];
    let (amount, scale) = match amount.chars().last() {
        Some('k' | 'K') => (&amount[..amount.len() - 1], Some("thousand")),
        Some('m' | 'M') => (&amount[..amount.len() - 1], Some("million")),
        Some('b' | 'B') => (&amount[..amount.len() - 1], Some("billion")),
        _ => (amount, None),
    };
    if !is_plain_number(amount) {
        return None;
    }
    let sign = if neg { "minus " } else { "" };
    if let Some(scale) = scale {
        return Some(format!("{sign}{} {scale} {many}", number_words(amount)));
    }
    let digits: String = amount.chars().filter(|c| *c != ',').collect();
    let (whole, frac) = digits.split_once('.').unwrap_or((&digits, ""));
    let whole_n: u64 = whole.parse().ok()?;
    let unit = if whole_n == 1 { one } else { many };
    if frac.len() == 2 && frac != "00" {
        let c: u64 = frac.parse().ok()?;
        let cw = if c == 1 { cent1 } else { cents };
        if whole_n == 0 {
            return Some(format!("{sign}{} {cw}", small(c)));
        }
        return Some(format!(
            "{sign}{} {unit} and {} {cw}",
            integer_words(whole),
            small(c)
        ));
    }
    if frac.is_empty() || frac.chars().all(|c| c == '0') {
        return Some(format!("{sign}{} {unit}", integer_words(whole)));
    }
    Some(format!("{sign}{} {many}", number_words(&digits)))
}

fn ordinal_words(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    let digits = ["st", "nd", "rd", "th"]
        .iter()
        .find_map(|suf| lower.strip_suffix(suf))?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(ordinal(&integer_words(digits)))
}

/// Cardinal words → ordinal words ("twenty-one" → "twenty-first").
pub fn ordinal(cardinal: &str) -> String {
    let (head, last) = match cardinal.rfind([' ', '-']) {
        Some(i) => (&cardinal[..=i], &cardinal[i + 1..]),
        None => ("", cardinal),
    };
    let last = match last {
        "one" => "first".to_string(),
        "two" => "second".to_string(),
        "three" => "third".to_string(),
        "five" => "fifth".to_string(),
        "eight" => "eighth".to_string(),
        "nine" => "ninth".to_string(),
        "twelve" => "twelfth".to_string(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    format!("{head}{last}")
}

fn fraction_words(a: &str, b: &str) -> String {
    let n: u64 = a.parse().unwrap_or(0);
    let d: u64 = b.parse().unwrap_or(0);
    let denom = match (d, n == 1) {
        (2, true) => "half".to_string(),
        (2, false) => "halves".to_string(),
        (4, true) => "quarter".to_string(),
        (4, false) => "quarters".to_string(),
        (0, _) => return format!("{} slash {}", integer_words(a), integer_words(b)),
        (d, true) => ordinal(&small(d)),
        (d, false) => format!("{}s", ordinal(&small(d))),
    };
    if d > 100 {
        return format!("{} over {}", integer_words(a), integer_words(b));
    }
    format!("{} {denom}", integer_words(a))
}

/// Any plain number: "-3.5" → "minus three point five", "1,234" → "one thousand two
/// hundred thirty-four", "1984" → "nineteen eighty-four" (four digits read as a year).
pub fn number_words(s: &str) -> String {
    let (sign, s) = match s.strip_prefix('-') {
        Some(r) => ("minus ", r),
        None => ("", s),
    };
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let whole_words = if frac.is_none() && !whole.contains(',') && whole.len() == 4 {
        year_words(whole).unwrap_or_else(|| integer_words(whole))
    } else {
        integer_words(whole)
    };
    let mut out = format!("{sign}{whole_words}");
    if let Some(f) = frac {
        out.push_str(" point");
        for d in f.chars().filter(|c| c.is_ascii_digit()) {
            out.push(' ');
            out.push_str(small(d as u64 - '0' as u64).as_str());
        }
    }
    out
}

/// Four-digit numbers read as years: 1100–1999 and 2010–2099 in pairs ("nineteen
/// eighty-four", "twenty twenty-four"), 2000–2009 as "two thousand five".
fn year_words(s: &str) -> Option<String> {
    let y: u64 = s.parse().ok()?;
    match y {
        1100..=1999 | 2010..=2099 => {
            let (hi, lo) = (y / 100, y % 100);
            Some(match lo {
                0 => format!("{} hundred", small(hi)),
                1..=9 => format!("{} oh {}", small(hi), small(lo)),
                _ => format!("{} {}", small(hi), small(lo)),
            })
        }
        _ => None,
    }
}

/// Digits (commas allowed) → cardinal words. More than 15 digits are read one by one.
pub fn integer_words(s: &str) -> String {
    let digits: String = s.chars().filter(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return String::new();
    }
    if digits.len() > 15 {
        return digits
            .chars()
            .map(|d| small(d as u64 - '0' as u64))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let n: u64 = digits.parse().unwrap_or(0);
    cardinal(n)
}

fn cardinal(n: u64) -> String {
    if n < 100 {
        return small(n);
    }
    const SCALES: [(u64, &str); 4] = [
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    for (scale, name) in SCALES {
        if n >= scale {
            let rest = n % scale;
            let head = format!("{} {name}", cardinal(n / scale));
            return if rest == 0 {
                head
            } else {
                format!("{head} {}", cardinal(rest))
            };
        }
    }
    let rest = n % 100;
    let head = format!("{} hundred", small(n / 100));
    if rest == 0 {
        head
    } else {
        format!("{head} {}", small(rest))
    }
}

/// 0–99 in words.
fn small(n: u64) -> String {
    use crate::numbers::{ONES, TENS};
    match n {
        0..=19 => ONES[n as usize].to_string(),
        20..=99 if n.is_multiple_of(10) => TENS[(n / 10) as usize].to_string(),
        20..=99 => format!("{}-{}", TENS[(n / 10) as usize], ONES[(n % 10) as usize]),
        _ => cardinal(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn en(s: &str) -> String {
        normalize(s, "en-us").text
    }

    #[test]
    fn numbers() {
        assert_eq!(en("I have 42 apples."), "I have forty-two apples.");
        assert_eq!(
            en("1,234,567"),
            "one million two hundred thirty-four thousand five hundred sixty-seven"
        );
        assert_eq!(en("It is 3.5 meters"), "It is three point five meters");
        assert_eq!(en("-7"), "minus seven");
        assert_eq!(en("100"), "one hundred");
        assert_eq!(en("3005"), "three thousand five");
    }

    #[test]
    fn years_and_ordinals() {
        assert_eq!(
            en("In 1984, on the 21st."),
            "In nineteen eighty-four, on the twenty-first."
        );
        assert_eq!(en("2024"), "twenty twenty-four");
        assert_eq!(en("2005"), "two thousand five");
        assert_eq!(en("1900"), "nineteen hundred");
        assert_eq!(
            en("the 2nd and 3rd and 12th"),
            "the second and third and twelfth"
        );
        assert_eq!(en("the 100th"), "the one hundredth");
    }

    #[test]
    fn times() {
        assert_eq!(en("at 3:30"), "at three thirty");
        assert_eq!(en("at 3:05 pm."), "at three oh five p m.");
        assert_eq!(en("at 7:00"), "at seven o'clock");
        assert_eq!(en("wake me at 10am"), "wake me at ten a m");
        assert_eq!(en("at 7 p.m. sharp"), "at seven p m sharp");
        assert_eq!(en("14:45"), "fourteen forty-five");
    }

    #[test]
    fn money_and_percent() {
        assert_eq!(en("$5"), "five dollars");
        assert_eq!(en("$1"), "one dollar");
        assert_eq!(
            en("It costs $3.50."),
            "It costs three dollars and fifty cents."
        );
        assert_eq!(en("€20"), "twenty euros");
        assert_eq!(en("$2.5M"), "two point five million dollars");
        assert_eq!(en("50%"), "fifty percent");
        assert_eq!(en("up 3.5%"), "up three point five percent");
        assert_eq!(en("$0.99"), "ninety-nine cents");
    }

    #[test]
    fn abbreviations() {
        assert_eq!(
            en("Dr. Smith met Mr. Jones."),
            "Doctor Smith met Mister Jones."
        );
        assert_eq!(en("apples, pears, etc."), "apples, pears, et cetera.");
        assert_eq!(en("cats vs. dogs"), "cats versus dogs");
    }

    #[test]
    fn units_ranges_fractions_symbols() {
        assert_eq!(en("5 km"), "five kilometers");
        assert_eq!(en("1 kg"), "one kilogram");
        assert_eq!(en("20°C"), "twenty degrees Celsius");
        assert_eq!(en("3-5 days"), "three to five days");
        assert_eq!(en("1/2 cup"), "one half cup");
        assert_eq!(en("3/4"), "three quarters");
        assert_eq!(en("salt & pepper"), "salt and pepper");
        assert_eq!(en("2+2=4"), "two plus two equals four");
    }

    #[test]
    fn emoji_control_and_markup_are_skipped() {
        let n = normalize("Hello 👋🏽 there\u{7}! **Bold** and `code` 🚀", "en-us");
        assert_eq!(n.text, "Hello there! Bold and code");
        assert_eq!(n.skipped, 4);
        let n = normalize("👨‍👩‍👧", "en-us");
        assert_eq!(n.text, "");
    }

    #[test]
    fn ellipses_quotes_and_long_digit_strings() {
        assert_eq!(en("Well... “maybe”"), "Well… \"maybe\"");
        assert_eq!(
            en("1234567890123456"),
            "one two three four five six seven eight nine zero one two three four five six"
        );
        assert_eq!(en("COVID-19"), "COVID nineteen");
    }

    #[test]
    fn other_languages_keep_numbers() {
        assert_eq!(normalize("Il est 3:30 😀", "fr-fr").text, "Il est 3:30");
    }

    #[test]
    fn ordinal_words() {
        assert_eq!(ordinal("twenty"), "twentieth");
        assert_eq!(ordinal("forty-one"), "forty-first");
        assert_eq!(ordinal("one hundred"), "one hundredth");
    }
}
