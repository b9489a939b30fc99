//! CLIP's byte-level byte-pair encoding: the byte → symbol map of GPT-2 (every byte
//! gets a printable, non-whitespace character, so any text has a spelling in 256
//! base symbols), and the merge loop that turns one word's symbols into vocabulary
//! ids, with CLIP's `</w>` end-of-word marker on the last symbol.
//!
//! The merge order is the `tokenizers` library's (which transformers' CLIPTokenizer
//! runs): repeatedly merge the adjacent pair of lowest rank, leftmost first. A
//! binary heap keeps that O(n log n) in the word length, so a prompt made of one
//! enormous "word" cannot stall the engine.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The end-of-word suffix CLIP appends to a word's last symbol.
pub const END_OF_WORD: &str = "</w>";

/// GPT-2's reversible byte → character table, indexed by byte: printable Latin-1
/// bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes
/// become U+0100, U+0101, … in byte order.
pub fn byte_symbols() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from('!')..=u32::from('~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        // Both ranges are valid scalar values (< 0x200).
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// The inverse of [`byte_symbols`].
pub fn symbol_bytes() -> HashMap<char, u8> {
    byte_symbols()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// A vocabulary and its merges, by id.
pub struct Bpe {
    vocab: HashMap<String, u32>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The id a symbol missing from the vocabulary becomes (CLIP: `<|endoftext|>`).
    unk: Option<u32>,
}

/// Why a merge list does not fit its vocabulary.
#[derive(Debug)]
pub enum BpeError {
    /// Merge number `index` (0-based) names a symbol the vocabulary lacks.
    MissingSymbol { index: usize, symbol: String },
}

impl Bpe {
    /// `merges` in rank order, each a pair of vocabulary symbols whose concatenation
    /// must be a symbol too.
    pub fn new(
        vocab: HashMap<String, u32>,
        merges: &[(String, String)],
        unk: Option<u32>,
    ) -> Result<Self, BpeError> {
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let id = |symbol: &str| {
                vocab
                    .get(symbol)
                    .copied()
                    .ok_or_else(|| BpeError::MissingSymbol {
                        index: rank,
                        symbol: symbol.to_string(),
                    })
            };
            let (left, right, merged) = (id(a)?, id(b)?, id(&format!("{a}{b}"))?);
            // A repeated merge keeps its first (lowest) rank, as `tokenizers` does.
            table.entry((left, right)).or_insert((rank as u32, merged));
        }
        Ok(Bpe {
            vocab,
            merges: table,
            unk,
        })
    }

    pub fn id(&self, symbol: &str) -> Option<u32> {
        self.vocab.get(symbol).copied()
    }

    pub fn vocab(&self) -> &HashMap<String, u32> {
        &self.vocab
    }

    /// The ids of one word, given as byte symbols (see [`byte_symbols`]), appending
    /// `</w>` to its last symbol. A symbol missing from the vocabulary becomes the
    /// unknown id (dropped when there is none), as in `tokenizers`; with a byte-level
    /// vocabulary every symbol is present, so this only matters for broken files.
    pub fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = word.chars().collect();
        let mut ids = Vec::with_capacity(chars.len());
        let mut buf = String::new();
        for (i, c) in chars.iter().enumerate() {
            buf.clear();
            buf.push(*c);
            if i + 1 == chars.len() {
                buf.push_str(END_OF_WORD);
            }
            if let Some(id) = self.vocab.get(&buf).copied().or(self.unk) {
                ids.push(id);
            }
        }
        self.merge_all(ids, out);
    }

    /// Merges `symbols` (a doubly linked list over a vector) until no adjacent pair
    /// has a merge, lowest rank first and leftmost among equal ranks.
    fn merge_all(&self, symbols: Vec<u32>, out: &mut Vec<u32>) {
        let n = symbols.len();
        if n == 0 {
            return;
        }
        let mut id = symbols;
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut alive = vec![true; n];
        // (rank, left position, left id, right id): stale entries are skipped.
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Reverse<(u32, usize, u32, u32)>>, l: usize, a, b| {
            if let Some(&(rank, _)) = self.merges.get(&(a, b)) {
                heap.push(Reverse((rank, l, a, b)));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, i, id[i], id[i + 1]);
        }
        while let Some(Reverse((rank, l, a, b))) = heap.pop() {
            let Some(r) = next[l] else { continue };
            if !alive[l] || id[l] != a || id[r] != b {
                continue;
            }
            let Some(&(current, merged)) = self.merges.get(&(a, b)) else {
                continue;
            };
            if current != rank {
                continue;
            }
            id[l] = merged;
            alive[r] = false;
            next[l] = next[r];
            if let Some(rr) = next[r] {
                prev[rr] = Some(l);
            }
            if let Some(p) = prev[l] {
                push(&mut heap, p, id[p], merged);
            }
            if let Some(nn) = next[l] {
                push(&mut heap, l, merged, id[nn]);
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            out.push(id[i]);
            at = next[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Bpe {
        let symbols = [
            "a", "b", "c", "a</w>", "b</w>", "c</w>", "ab", "abc</w>", "aa",
        ];
        let vocab = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32))
            .collect();
        let merges =
            [("a", "b"), ("ab", "c</w>"), ("a", "a")].map(|(a, b)| (a.to_string(), b.to_string()));
        Bpe::new(vocab, &merges, Some(99)).unwrap()
    }

    #[test]
    fn byte_symbols_are_gpt2s_table() {
        let t = byte_symbols();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ'); // 32 is the 33rd remapped byte: U+0120
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń'); // the soft hyphen is remapped, after the C1 block
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
        assert!(t.iter().all(|c| !c.is_whitespace() && !c.is_control()));
        let back = symbol_bytes();
        assert!((0..=255u8).all(|b| back[&t[b as usize]] == b));
    }

    #[test]
    fn merges_lowest_rank_first_and_marks_the_word_end() {
        let bpe = toy();
        let mut out = Vec::new();
        bpe.encode_word("abc", &mut out);
        assert_eq!(out, vec![7]); // a b → ab, then ab c</w> → abc</w>
        out.clear();
        bpe.encode_word("aaa", &mut out);
        assert_eq!(out, vec![8, 3]); // leftmost "a a" first: aa, a</w>
        out.clear();
        bpe.encode_word("axb", &mut out);
        assert_eq!(out, vec![0, 99, 4]); // x is unknown: the unknown id, which merges with nothing
    }

    #[test]
    fn a_merge_outside_the_vocabulary_is_refused() {
        let vocab = [("a", 0u32), ("b", 1)]
            .map(|(s, i)| (s.to_string(), i))
            .into_iter()
            .collect();
        let merges = [("a".to_string(), "b".to_string())];
        match Bpe::new(vocab, &merges, None) {
            Err(BpeError::MissingSymbol { index: 0, symbol }) => assert_eq!(symbol, "ab"),
            other => panic!("expected a missing symbol, got {:?}", other.err()),
        }
    }

    #[test]
    fn a_long_word_merges_in_n_log_n() {
        let bpe = toy();
        let word = "a".repeat(200_001);
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        bpe.encode_word(&word, &mut out);
        assert!(start.elapsed().as_secs_f64() < 5.0);
        assert_eq!(out.len(), 100_001);
        assert_eq!(out.last(), Some(&3));
    }
}
