//! A probe's `stack` setting as the daemon's TOML and `ctl add`'s JSON carry it: `true`,
//! `false` or a mode's name (see [`StackMode::from_setting`]).

use serde::{Deserializer, de};

use super::StackMode;

/// Deserializes `stack = true | false | "fp" | "auto" | "dwarf"` (absent: no stacks).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StackMode>, D::Error> {
    struct Setting;
    impl de::Visitor<'_> for Setting {
        type Value = Option<StackMode>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("true, false, \"fp\", \"auto\" or \"dwarf\"")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            StackMode::from_setting(if v { "true" } else { "false" }).map_err(E::custom)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            StackMode::from_setting(v).map_err(E::custom)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Setting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "deserialize")]
        stack: Option<StackMode>,
    }

    /// `true` is fp (no stack copy), `false` none, names their mode; anything else is one
    /// clear error naming the accepted values.
    #[test]
    fn settings() {
        let parse = |t: &str| serde_json::from_str::<Probe>(t).map(|p| p.stack);
        assert_eq!(parse(r#"{"stack":true}"#).unwrap(), Some(StackMode::Fp));
        assert_eq!(parse(r#"{"stack":false}"#).unwrap(), None);
        assert_eq!(parse(r#"{}"#).unwrap(), None);
        assert_eq!(
            parse(r#"{"stack":"dwarf"}"#).unwrap(),
            Some(StackMode::Dwarf)
        );
        assert_eq!(parse(r#"{"stack":"auto"}"#).unwrap(), Some(StackMode::Auto));
        let err = parse(r#"{"stack":"cfi"}"#).unwrap_err().to_string();
        assert!(err.contains("\"dwarf\"") && err.contains("cfi"), "{err}");
        assert!(parse(r#"{"stack":3}"#).is_err());
    }
}
