//! The Lua scripts: the version compare-and-set every write of an entry goes through, and the
//! owner-checked release of the fill lock. Each touches exactly one key, so on a Redis Cluster
//! each runs on the master of that key's slot without hash tags.

/// Compare-and-set on the cached version. `KEYS[1]` = entry key; ARGV = version, value, TTL ms,
/// what to do on an equal version ([`OnEqual::arg`]). Returns 1 written, 0 refused (equal
/// version), -1 refused (the cache holds a newer version). A value that is not an entry (or has
/// no numeric `v`) is overwritten.
pub const CAS: &str = r"
local want = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, d = pcall(cjson.decode, cur)
  if ok and type(d) == 'table' and tonumber(d.v) ~= nil then
    local have = tonumber(d.v)
    if have > want then return -1 end
    if have == want then
      if ARGV[4] == '1' then return 0 end
      if ARGV[4] == '2' and d.k ~= 'i' then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// Deletes the lock `KEYS[1]` only if `ARGV[1]` (our token) still owns it.
pub const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What [`CAS`] does when the cache holds the same version as the value being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEqual {
    /// Overwrite: the API's fills (a refresh of the same version renews the entry).
    Replace,
    /// Keep what is there: invalidation markers, and redelivered events.
    Refuse,
    /// Overwrite only an invalidation marker: a profile from an event replaces the marker
    /// the API left for the same version, but not a profile the API filled itself.
    ReplaceMarker,
}

impl OnEqual {
    /// `ARGV[4]` of [`CAS`]. `0` and `1` are what the API's fills and invalidations have always
    /// sent (tools reading `MONITOR`, like the chaos scenarios, tell them apart by it).
    pub fn arg(self) -> &'static str {
        match self {
            Self::Replace => "0",
            Self::Refuse => "1",
            Self::ReplaceMarker => "2",
        }
    }
}

/// What [`CAS`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The value was written.
    Written,
    /// Refused: the cache holds the same version (see [`OnEqual`]).
    SameVersion,
    /// Refused: the cache holds a newer version.
    Older,
}

impl Written {
    /// The meaning of the script's answer.
    pub fn from_answer(answer: i64) -> Self {
        match answer {
            1 => Self::Written,
            0 => Self::SameVersion,
            _ => Self::Older,
        }
    }

    /// Whether the value was written.
    pub fn is_written(self) -> bool {
        self == Self::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_answers_have_one_meaning() {
        assert_eq!(Written::from_answer(1), Written::Written);
        assert_eq!(Written::from_answer(0), Written::SameVersion);
        assert_eq!(Written::from_answer(-1), Written::Older);
        assert!(Written::Written.is_written() && !Written::SameVersion.is_written());
    }

    #[test]
    fn every_script_touches_one_key_so_a_cluster_runs_it_in_one_slot() {
        // A script touching two keys would need them hash-tagged into one slot (`{id}`), a
        // change of the key format (docs/contracts.md, "Redis Cluster").
        for script in [CAS, UNLOCK] {
            assert!(script.contains("KEYS[1]"));
            assert!(
                !script.contains("KEYS[2]") && !script.contains("#KEYS"),
                "{script}"
            );
        }
    }

    #[test]
    fn every_equal_policy_is_an_argument_the_script_knows() {
        for on_equal in [OnEqual::Replace, OnEqual::Refuse, OnEqual::ReplaceMarker] {
            let arg = on_equal.arg();
            // `Replace` is the script's fall-through; the other two are tested for by value.
            assert!(on_equal == OnEqual::Replace || CAS.contains(&format!("'{arg}'")));
        }
    }
}
