//! Deterministic train/test assignment by a hash of the prompt, so one prompt never lands in both
//! splits and the split does not depend on file order, platform or Rust version.

/// 64-bit FNV-1a: tiny, stable across platforms and releases (unlike `std`'s `DefaultHasher`).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Mixes a seed with a key (SplitMix64 finaliser), for per-record seeded draws.
pub fn mix(seed: u64, key: u64) -> u64 {
    let mut z = seed ^ key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The prompt's place in [0, 1), uniform over prompts.
pub fn unit(prompt: &str) -> f64 {
    (mix(0, stable_hash(prompt.as_bytes())) >> 11) as f64 / (1u64 << 53) as f64
}

/// True when a pair with this prompt belongs to the test split.
pub fn is_test(prompt: &str, test_fraction: f64) -> bool {
    unit(prompt) < test_fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_values() {
        // Reference values of 64-bit FNV-1a (http://www.isthe.com/chongo/tech/comp/fnv/).
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn split_fraction_is_respected_and_stable() {
        let prompts: Vec<String> = (0..20_000).map(|i| format!("prompt number {i}")).collect();
        let test = prompts.iter().filter(|p| is_test(p, 0.1)).count();
        assert!((1_800..2_200).contains(&test), "{test} of 20000 in test");
        // Golden values from an independent Python implementation of FNV-1a + the SplitMix64 finaliser:
        // a change of hash, mixing or scaling moves prompts between the splits, and these catch it.
        let golden = [
            ("prompt number 0", 0.950666454099482),
            ("prompt number 1", 0.7953531821851347),
            ("prompt number 3", 0.03797248002581355),
            ("\n\nHuman: How do I boil an egg?\n\nAssistant:", 0.4237463213635788),
        ];
        for (prompt, want) in golden {
            assert!((unit(prompt) - want).abs() < 1e-15, "{prompt:?}: {} vs {want}", unit(prompt));
        }
        assert!(is_test("prompt number 3", 0.1) && !is_test("prompt number 0", 0.1));
        assert_eq!(prompts.iter().filter(|p| is_test(p, 0.0)).count(), 0);
        assert_eq!(prompts.iter().filter(|p| is_test(p, 1.0)).count(), prompts.len());
    }
}
