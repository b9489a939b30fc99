//! Deterministic shares of a jobs file's images, so that N machines given the same
//! file and `--shard 0/N` … `--shard N-1/N` produce exactly the whole set with no
//! coordination: image `index` of job `id` belongs to shard
//! `FNV-1a-64(id ‖ 0xFF ‖ index as 8 little-endian bytes) mod N`. The hash is
//! fixed (not Rust's randomised `Hash`), so every machine and every version agree.

use crate::error::{Error, Result};

/// Share `index` of `count` shares (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Everything.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `K/N` with `N ≥ 1`. `K` is taken modulo `N`, so both 0-based numbering
    /// (`0/3 1/3 2/3`, a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX`) and
    /// 1-based numbering (`1/3 2/3 3/3`, a Slurm array `--array=1-3`) name every
    /// share once.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::invalid(
                "shard",
                format!("{text:?}: {why} (expected K/N, e.g. 0/3, with N ≥ 1 and 0 ≤ K ≤ N)"),
            )
        };
        let (k, n) = text.split_once('/').ok_or_else(|| bad("missing `/`"))?;
        let k: u64 = k
            .trim()
            .parse()
            .map_err(|_| bad("K is not a whole number"))?;
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| bad("N is not a whole number"))?;
        if n == 0 {
            return Err(bad("N must be at least 1"));
        }
        if k > n {
            return Err(bad("K is larger than N"));
        }
        Ok(Shard {
            index: k % n,
            count: n,
        })
    }

    /// Whether image `index` of job `id` is in this share.
    pub fn owns(&self, id: &str, index: u64) -> bool {
        self.count <= 1 || shard_hash(id, index) % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// FNV-1a, 64 bit, over `id`, a 0xFF separator and `index` in little-endian bytes.
pub fn shard_hash(id: &str, index: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        h ^= byte as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    id.bytes().for_each(&mut eat);
    eat(0xff);
    index.to_le_bytes().into_iter().for_each(&mut eat);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_answers() {
        // FNV-1a 64 of the empty string is the offset basis; of "a" the published
        // test vector 0xaf63dc4c8601ec8c.
        let fnv = |bytes: &[u8]| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h
        };
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut bytes = b"job".to_vec();
        bytes.push(0xff);
        bytes.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(shard_hash("job", 7), fnv(&bytes));
    }

    #[test]
    fn shares_partition_the_images() {
        let shards: Vec<Shard> = (1..=3)
            .map(|k| Shard::parse(&format!("{k}/3")).expect("k/3"))
            .collect();
        let mut sizes = [0usize; 3];
        for id in ["a", "b", "cats", "x-17"] {
            for index in 0..300u64 {
                let owners: Vec<usize> = (0..3).filter(|&s| shards[s].owns(id, index)).collect();
                assert_eq!(owners.len(), 1, "{id} {index}");
                sizes[owners[0]] += 1;
            }
        }
        // Roughly a third each.
        assert!(sizes.iter().all(|&s| (300..=500).contains(&s)), "{sizes:?}");
        assert_eq!(
            Shard::parse("3/3").expect("1-based"),
            Shard::parse("0/3").expect("0-based")
        );
        for bad in ["3", "1/0", "4/3", "a/3", "1/b"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
