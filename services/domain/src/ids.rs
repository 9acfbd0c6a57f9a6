//! Validating newtypes for the artifact id and the run counter (generation).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// An artifact's id: a UUID, written as its lowercase hyphenated string in
/// every format (binary formats included, unlike `uuid`'s own serde). It is
/// the Kafka key of every record about the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactId(Uuid);

impl Serialize for ArtifactId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ArtifactId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A string that is not a UUID was given as an artifact id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("artifact id {given:?} is not a UUID (expected e.g. 0b7e4c2a-7d1f-4c5e-9a53-2f4a8c9e1d00)")]
pub struct InvalidArtifactId {
    /// The rejected input.
    pub given: String,
}

impl ArtifactId {
    /// A fresh random (v4) id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The UUID inside.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for ArtifactId {
    type Err = InvalidArtifactId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| InvalidArtifactId {
                given: s.to_owned(),
            })
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A run counter: the first run of an artifact is generation 1, and every
/// reprocess bumps it. Always at least 1; written as an Avro `int`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(u32);

/// A generation below 1 or above `i32::MAX` was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("generation {given} is out of range: it must be between 1 and {max}", max = i32::MAX)]
pub struct InvalidGeneration {
    /// The rejected input.
    pub given: i64,
}

impl Generation {
    /// The first run of an artifact.
    pub const FIRST: Generation = Generation(1);

    /// Validates a generation number.
    pub fn new(n: i64) -> Result<Self, InvalidGeneration> {
        if (1..=i64::from(i32::MAX)).contains(&n) {
            Ok(Self(n as u32))
        } else {
            Err(InvalidGeneration { given: n })
        }
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The generation after this one (saturating at the maximum).
    pub fn next(self) -> Self {
        Self((self.0 + 1).min(i32::MAX as u32))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Generation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0 as i32)
    }
}

impl<'de> Deserialize<'de> for Generation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Avro `int` in every schema; schema-aware readers insist on i32.
        let n = i32::deserialize(d)?;
        Generation::new(n.into()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_id_round_trips_through_its_string() {
        let id = ArtifactId::new_random();
        let parsed: ArtifactId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn artifact_id_rejects_non_uuid_with_an_example() {
        let err = "not-a-uuid".parse::<ArtifactId>().unwrap_err();
        assert_eq!(err.given, "not-a-uuid");
        assert!(err.to_string().contains("expected e.g."));
    }

    #[test]
    fn generation_bounds() {
        assert!(Generation::new(0).is_err());
        assert!(Generation::new(-3).is_err());
        assert!(Generation::new(i64::from(i32::MAX) + 1).is_err());
        assert_eq!(Generation::new(1).unwrap(), Generation::FIRST);
        assert_eq!(Generation::FIRST.next().get(), 2);
        let max = Generation::new(i64::from(i32::MAX)).unwrap();
        assert_eq!(max.next(), max);
    }

    #[test]
    fn generation_serde_is_a_plain_int_and_validates() {
        let g = Generation::new(7).unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), "7");
        assert_eq!(serde_json::from_str::<Generation>("7").unwrap(), g);
        assert!(serde_json::from_str::<Generation>("0").is_err());
    }
}
