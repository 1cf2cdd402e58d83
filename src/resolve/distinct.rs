//! Numbering a batch's tags in the order first seen, so that each is resolved once however many
//! containers name it. The few strings of a usual pod are compared one by one, which costs less
//! than hashing each; past [`SCAN_LIMIT`] distinct strings a hash map takes over, so a review
//! naming thousands of images costs time linear in them, not quadratic.

use std::collections::HashMap;

/// Most distinct strings searched one by one before the map takes over.
pub(crate) const SCAN_LIMIT: usize = 16;

/// Distinct strings, each with its number (its place in first-seen order).
#[derive(Debug, Default)]
pub(crate) struct Numbering<'a> {
    seen: Vec<&'a str>,
    /// Built when `seen` grows past [`SCAN_LIMIT`], then kept up to date.
    index: Option<HashMap<&'a str, usize>>,
}

impl<'a> Numbering<'a> {
    /// The number of `s`, and whether it is new: an earlier string equal to it keeps its number,
    /// a new one gets the next.
    pub(crate) fn number(&mut self, s: &'a str) -> (usize, bool) {
        let next = self.seen.len();
        let found = match &mut self.index {
            Some(index) => {
                let i = *index.entry(s).or_insert(next);
                (i != next).then_some(i)
            }
            None => self.seen.iter().position(|&x| x == s),
        };
        if let Some(i) = found {
            return (i, false);
        }
        self.seen.push(s);
        if self.index.is_none() && self.seen.len() > SCAN_LIMIT {
            self.index = Some(self.seen.iter().enumerate().map(|(i, &x)| (x, i)).collect());
        }
        (next, true)
    }

    /// Whether look-ups go through the hash map (past [`SCAN_LIMIT`] distinct strings).
    #[cfg(test)]
    fn indexed(&self) -> bool {
        self.index.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers a plain hash map gives, the reference for [`Numbering`].
    fn reference<'a>(items: &[&'a str]) -> Vec<(usize, bool)> {
        let mut map: HashMap<&'a str, usize> = HashMap::new();
        items
            .iter()
            .map(|&s| {
                let next = map.len();
                let i = *map.entry(s).or_insert(next);
                (i, i == next)
            })
            .collect()
    }

    #[test]
    fn numbers_match_a_hash_map_on_both_sides_of_the_switch() {
        let names: Vec<String> = (0..3 * SCAN_LIMIT)
            .map(|i| format!("r/app{i}:v1"))
            .collect();
        for distinct in [
            0,
            1,
            2,
            SCAN_LIMIT - 1,
            SCAN_LIMIT,
            SCAN_LIMIT + 1,
            3 * SCAN_LIMIT,
        ] {
            // Each distinct name three times, interleaved so repeats come before and after the
            // map is built.
            let mut items: Vec<&str> = Vec::new();
            for round in 0..3 {
                for (i, n) in names[..distinct].iter().enumerate() {
                    if (i + round) % 2 == 0 || round == 1 {
                        items.push(n);
                    }
                }
            }
            let mut numbering = Numbering::default();
            let got: Vec<(usize, bool)> = items.iter().map(|s| numbering.number(s)).collect();
            assert_eq!(got, reference(&items), "{distinct} distinct names");
        }
    }

    /// The bound: past SCAN_LIMIT distinct strings, look-ups are hashed (without the switch a
    /// review of n images would make n²/2 string comparisons).
    #[test]
    fn the_map_takes_over_past_the_scan_limit() {
        let names: Vec<String> = (0..=SCAN_LIMIT).map(|i| format!("r/app{i}:v1")).collect();
        let mut numbering = Numbering::default();
        for n in &names[..SCAN_LIMIT] {
            numbering.number(n);
            // Repeats do not count towards the limit.
            numbering.number(n);
        }
        assert!(
            !numbering.indexed(),
            "{SCAN_LIMIT} distinct strings are scanned"
        );
        numbering.number(&names[SCAN_LIMIT]);
        assert!(numbering.indexed(), "one more builds the map");
        assert_eq!(numbering.number(&names[3]), (3, false));
        assert_eq!(numbering.number("r/new:v1"), (SCAN_LIMIT + 1, true));
    }
}
