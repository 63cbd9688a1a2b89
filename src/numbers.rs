//! English number words, shared by the text normaliser (numbers → words, for speech) and
//! the timer parser (words → numbers, from transcripts). Pure tables and lookups.

/// 0–19.
pub const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];

/// Tens by index (`TENS[2]` = "twenty"); 0 and 1 are unused.
pub const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// The value of one number word ("seven" → 7, "forty" → 40); digits too.
pub fn word_value(w: &str) -> Option<u64> {
    if let Ok(n) = w.parse::<u64>() {
        return Some(n);
    }
    if let Some(i) = ONES.iter().position(|x| *x == w) {
        return Some(i as u64);
    }
    TENS.iter()
        .position(|x| !x.is_empty() && *x == w)
        .map(|i| i as u64 * 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn values() {
        assert_eq!(super::word_value("seventeen"), Some(17));
        assert_eq!(super::word_value("ninety"), Some(90));
        assert_eq!(super::word_value("42"), Some(42));
        assert_eq!(super::word_value(""), None);
    }
}
