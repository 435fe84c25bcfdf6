//! Sequences that decode only up to a fixed number of elements.
//!
//! A frame's byte limit alone does not bound what decoding it costs: an empty string
//! is one byte on the wire and 24 in memory, so a 10 MB frame of them would cost
//! 240 MB before any per-field check ran. Every `Vec` of a message therefore decodes
//! through [`vec`] (or [`option_vec`]), which refuses the element past its bound
//! instead of allocating for a length the peer merely declared.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

/// Decodes a sequence of at most `N` elements; more is a decode error.
pub fn vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(Bounded::<T, N>(PhantomData))
}

/// [`vec`] for an optional sequence.
pub fn option_vec<'de, D, T, const N: usize>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_option(Optional::<T, N>(PhantomData))
}

/// Decodes a string of at most `N` bytes; a longer one is a decode error, refused
/// before it is copied.
pub fn string<'de, D, const N: usize>(deserializer: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_str(BoundedStr::<N>)
}

/// [`string`] for an optional string.
pub fn option_string<'de, D, const N: usize>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_option(OptionalStr::<N>)
}

struct BoundedStr<const N: usize>;

impl<const N: usize> Visitor<'_> for BoundedStr<N> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string of at most {N} bytes")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<String, E> {
        if text.len() > N {
            return Err(E::custom(format_args!("a string longer than {N} bytes")));
        }
        Ok(text.to_owned())
    }
}

struct OptionalStr<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for OptionalStr<N> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nothing, or a string of at most {N} bytes")
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        string::<D, N>(deserializer).map(Some)
    }
}

struct Bounded<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Bounded<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a sequence of at most {N} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        // The declared length is only a hint from the peer: never allocate past N.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N).min(64));
        while let Some(item) = seq.next_element()? {
            if out.len() == N {
                return Err(A::Error::custom(format_args!(
                    "more than {N} elements in a sequence"
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

struct Optional<T, const N: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Optional<T, N> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nothing, or a sequence of at most {N} elements")
    }

    fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        vec::<D, T, N>(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::codec::{decode, encode};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Capped {
        #[serde(deserialize_with = "super::vec::<_, _, 3>")]
        items: Vec<String>,
        #[serde(deserialize_with = "super::option_vec::<_, _, 2>")]
        maybe: Option<Vec<u8>>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Short {
        #[serde(deserialize_with = "super::string::<_, 4>")]
        text: String,
        #[serde(deserialize_with = "super::option_string::<_, 2>")]
        maybe: Option<String>,
    }

    #[test]
    fn strings_decode_up_to_their_bound_only() {
        let fits = Short {
            text: "abcd".into(),
            maybe: Some("ab".into()),
        };
        assert_eq!(decode::<Short>(&encode(&fits).unwrap()).unwrap(), fits);
        let none = Short {
            text: String::new(),
            maybe: None,
        };
        assert_eq!(decode::<Short>(&encode(&none).unwrap()).unwrap(), none);
        for over in [
            Short {
                text: "abcde".into(),
                maybe: None,
            },
            Short {
                text: String::new(),
                maybe: Some("abc".into()),
            },
        ] {
            assert!(
                decode::<Short>(&encode(&over).unwrap()).is_err(),
                "{over:?}"
            );
        }
        // A declared length of ten million with four bytes behind it, and invalid
        // UTF-8 within the bound: errors, never a panic.
        assert!(decode::<Short>(&[0x80, 0xad, 0xe2, 0x04, b'a', b'b', b'c', b'd', 0]).is_err());
        assert!(decode::<Short>(&[2, 0xff, 0xfe, 0]).is_err());
    }

    #[test]
    fn up_to_the_bound_decodes() {
        let msg = Capped {
            items: vec!["a".into(), String::new(), "c".into()],
            maybe: Some(vec![1, 2]),
        };
        assert_eq!(decode::<Capped>(&encode(&msg).unwrap()).unwrap(), msg);
        let none = Capped {
            items: vec![],
            maybe: None,
        };
        assert_eq!(decode::<Capped>(&encode(&none).unwrap()).unwrap(), none);
    }

    #[test]
    fn past_the_bound_is_refused() {
        let over = Capped {
            items: vec![String::new(); 4],
            maybe: None,
        };
        assert!(decode::<Capped>(&encode(&over).unwrap()).is_err());
        let over = Capped {
            items: vec![],
            maybe: Some(vec![0; 3]),
        };
        assert!(decode::<Capped>(&encode(&over).unwrap()).is_err());
    }

    /// Ten million empty strings declared: refused at the fourth, without
    /// allocating for the declared length.
    #[test]
    fn a_huge_declared_length_allocates_nothing() {
        let mut bytes = vec![0x80, 0xad, 0xe2, 0x04]; // varint 10_000_000
        bytes.extend(std::iter::repeat_n(0u8, 10_000));
        bytes.push(0);
        assert!(decode::<Capped>(&bytes).is_err());
    }
}
